"""Helpers every route uses: bounded body reading, client and admin auth, JSON answers."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope, Send

from relaygate.accounting import new_request_id
from relaygate.auth.clients import ClientInfo
from relaygate.errors import (
    AdminForbidden,
    InvalidRequest,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
)
from relaygate.gateway import Gateway
from relaygate.http.headers import extract_key
from relaygate.state import StateUnavailable


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def request_id(request: Request) -> str:
    rid = getattr(request.state, "request_id", None)
    if rid is None:
        rid = new_request_id()
        request.state.request_id = rid
    return str(rid)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(data), status_code=status, headers=headers, media_type="application/json"
    )


def refuse_declared(declared: bytes | str | None, limit: int) -> None:
    """A declared Content-Length over `limit` is refused before the body is read (413); one that
    is not a number is a 400."""
    if declared is None:
        return
    try:
        size = int(declared.decode("latin-1") if isinstance(declared, bytes) else declared)
    except ValueError:
        raise InvalidRequest("Content-Length is not a number.") from None
    if size > limit:
        raise PayloadTooLarge(limit)


async def read_body(request: Request, limit: int) -> bytes:
    refuse_declared(request.headers.get("content-length"), limit)
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(limit)
        parts.append(chunk)
    return b"".join(parts)


async def read_json(request: Request, limit: int) -> tuple[dict[str, Any], int]:
    raw = await read_body(request, limit)
    return parse_json(raw), len(raw)


def parse_json(raw: bytes) -> dict[str, Any]:
    """A request body that must be one JSON object."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


def require_client(request: Request) -> ClientInfo:
    gw = gateway(request)
    client = gw.clients.authenticate(extract_key(request.headers))
    if client is None:
        gw.accounting.refused("auth")
        raise Unauthorized()
    request.state.client = client
    return client


def is_admin(request: Request) -> bool:
    secret = gateway(request).config.admin_secret
    if not secret:
        return False
    presented = request.headers.get("admin-secret")
    if presented is None:
        auth = request.headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        presented = value.strip() if scheme.lower() == "bearer" else None
    if not presented:
        return False
    return hmac.compare_digest(presented.encode(), secret.encode())


def require_admin(request: Request) -> None:
    if not is_admin(request):
        raise AdminForbidden()


_INTERNAL = (
    b'{"error":{"message":"Internal error.","type":"server_error",'
    b'"code":"internal_error","param":null}}'
)
_boundary_log = logging.getLogger("relaygate.http")


async def internal_error(scope: Scope, send: Send, exc: Exception, *, started: bool) -> None:
    """At the ASGI boundary: log the failure by type only and answer 500 if nothing was sent."""
    _boundary_log.error("unhandled %s on %s", type(exc).__name__, scope.get("path"))
    if not started:
        await send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": _INTERNAL})


GONE = "relaygate.client_gone"  # set in the scope by http/server.py when the client went away
# set in the scope by http/server.py: it cancels a request whose client leaves before the answer
# is complete, so a stream needs no watcher of its own (another ASGI server: the stream watches)
WATCHED = "relaygate.watched"
# a key of an `http.response.start` message: http/server.py keeps the head and writes it with the
# first body part, one write for a whole answer (another ASGI server ignores the key)
HOLD = "relaygate.hold"


def cancelled_by_us(scope: Scope, gw: Gateway) -> bool:
    """Whether the current task's cancellation is the gateway's own doing (the client went away,
    or the shutdown grace ran out) rather than the server's: if so it is taken back here and the
    request ends quietly (no 'Exception in ASGI application')."""
    if not (scope.get(GONE) or gw.inflight.closing):
        return False
    task = asyncio.current_task()
    if task is not None:
        while task.cancelling():
            task.uncancel()
    return True


DB_TIMEOUT_S = 2.0  # SPEC §8a: a read for an admin route or the status page, at most
FRESH_S = 0.3  # of which a read waits at most this long for the ledger's latest rows
T = TypeVar("T")


async def db_call(work: Awaitable[T]) -> T:
    """A read from the state store for a route: a 503 in the error format when the store fails
    or does not answer within DB_TIMEOUT_S."""
    return await bounded(work)


async def db_write(work: Awaitable[T]) -> T:
    """A write to the state store for a route. It is awaited to its end (every backend bounds
    its own waits), so the answer says what happened: a 503 means nothing was written."""
    try:
        return await work
    except ValueError:
        raise InvalidRequest("The change conflicts with what is stored.") from None
    except (StateUnavailable, OSError) as exc:
        _boundary_log.warning("database write failed: %s", type(exc).__name__)
        raise _unavailable() from None


async def fresh_read(gw: Gateway, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """A read that should include the latest requests: the ledger's buffer is written first
    when that takes under FRESH_S (it is written every 250 ms anyway), all within DB_TIMEOUT_S."""
    started = asyncio.get_running_loop().time()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(FRESH_S):
            await gw.accounting.ledger.flush()  # cancel-safe: rows are never lost or doubled
    left = DB_TIMEOUT_S - (asyncio.get_running_loop().time() - started)
    return await bounded(fn(*args, **kwargs), left)


async def bounded(work: Awaitable[T], seconds: float = DB_TIMEOUT_S) -> T:
    try:
        async with asyncio.timeout(seconds):
            return await work
    except (TimeoutError, StateUnavailable, OSError) as exc:
        _boundary_log.warning("database call failed: %s", type(exc).__name__)
        raise _unavailable() from None


def _unavailable() -> Unavailable:
    return Unavailable(
        "The database did not answer in time; try again.", code="database_unavailable"
    )
