"""The app factory: routes, error mapping (SPEC §8) and a lifespan that starts and closes the
Gateway. Errors leave as JSON in one shape; tracebacks never leave at all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relaygate.auth.first_key import ensure_first_client_key
from relaygate.config.model import Config
from relaygate.errors import InvalidRequest, NotFound, RelaygateError
from relaygate.gateway import Gateway
from relaygate.http._asgi import answer_error
from relaygate.http._common import cancelled_by_us, gateway, internal_error, request_id
from relaygate.http.doors import Routes, openapi_paths
from relaygate.http.headers import error_headers
from relaygate.http.proxy import Proxy
from relaygate.http.routes import admin, clients, models, status, usage


class ErrorBoundary:
    """Pure ASGI: anything unhandled becomes a 500 in the SPEC's shape, logged by type only."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:  # noqa: BLE001 (the ASGI boundary: log, answer, no traceback)
            await internal_error(scope, send, exc, started=started)


class RelaygateApp(FastAPI):
    """FastAPI for the admin, page and model-list routes, with every proxied route (the front
    doors, http/doors.py) served ahead of its middleware, routing and dependency layers by the
    one raw-ASGI proxy handler (http/proxy.py); they appear in the OpenAPI schema all the same."""

    proxy: Proxy | None = None
    doors: Routes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.proxy is not None and self.doors is not None and scope["type"] == "http":
            route = self.doors.match(scope)
            if route is not None:
                await self.proxy(scope, receive, send, route)
                return
        if scope["type"] == "http" and not scope["path"].isprintable():
            # a route pattern's `$` also matches before a trailing newline: no such path exists
            await answer_error(send, NotFound("Not Found"), "")
            return
        try:
            await super().__call__(scope, receive, send)
        except asyncio.CancelledError:  # the client left (http/server.py), or shutdown ran out
            if not cancelled_by_us(scope, self.state.gateway):
                raise


async def _relaygate_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RelaygateError)
    headers = {**error_headers(exc), "x-request-id": request_id(request)}
    body = exc.body(gateway(request).redact)  # messages may echo what the caller sent
    return Response(body, status_code=exc.status, headers=headers, media_type="application/json")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    err = RelaygateError(str(exc.detail), code=code)
    err.status, err.type = exc.status_code, "invalid_request_error"
    return await _relaygate_error(request, err)


async def _validation_error(request: Request, exc: Exception) -> Response:
    """A query or path parameter FastAPI could not parse: 400 in the SPEC's shape, not 422."""
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body")]
    where = ".".join(loc) or "request"
    err = InvalidRequest(f"{where}: {first.get('msg', 'invalid value')}", param=where)
    return await _relaygate_error(request, err)


def create_app(
    config: Config | None = None,
    *,
    gateway: Gateway | None = None,
    announce: Callable[[str], None] | None = None,
) -> FastAPI:
    gw = gateway if gateway is not None else Gateway(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gw.start()
        await ensure_first_client_key(gw, announce=announce)
        try:
            yield
        finally:
            await gw.aclose()

    app = RelaygateApp(
        title="relaygate",
        summary="One OpenAI-compatible endpoint for many providers and many keys.",
        version="0.1.0",
        lifespan=lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.gateway = gw
    app.add_exception_handler(RelaygateError, _relaygate_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for module in (models, status):
        app.include_router(module.router)
    if gw.config.admin_secret:  # the admin API exists only with a secret (SPEC §5)
        for admin_module in (admin, clients, usage):
            app.include_router(admin_module.router)
        app.include_router(status.admin_router)
    app.add_middleware(ErrorBoundary)
    app.proxy, app.doors = Proxy(gw), Routes()
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = default_openapi()
            schema["paths"] = {**openapi_paths(), **schema.get("paths", {})}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def app_from_env() -> FastAPI:
    """The app from the environment and config file (uvicorn --factory, `serve --reload`)."""
    from relaygate._logging import setup_logging
    from relaygate.config.load import load_config

    config = load_config()
    gw = Gateway(config)
    setup_logging(config.server.log_level, json=config.server.log_json, redactor=gw.redact)
    return create_app(gateway=gw)
