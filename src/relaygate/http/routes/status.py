"""Open routes (health, status page) and the seed route GET /keys/status."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from importlib import resources

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from relaygate.http._common import gateway, is_admin, json_response, require_client

router = APIRouter()


@router.get("/health", tags=["open"], summary="Liveness")
async def health() -> Response:
    return json_response({"status": "healthy", "timestamp": datetime.now(UTC).isoformat()})


@router.get("/keys/status", tags=["client"], summary="Upstream key states (key ids only)")
async def keys_status(request: Request) -> Response:
    if not is_admin(request):
        require_client(request)
    gw = gateway(request)
    return json_response({"timestamp": time.time(), "keys": gw.key_states()})


@router.get("/", tags=["open"], summary="Status page", response_class=HTMLResponse)
async def status_page() -> Response:
    page = resources.files("relaygate.web").joinpath("status.html").read_text(encoding="utf-8")
    return HTMLResponse(page)


@router.get("/status.json", tags=["open"], summary="Data of the status page (no secrets)")
async def status_data(request: Request) -> Response:
    gw = gateway(request)
    providers = []
    for name, pool in gw.pools.items():
        states = pool.states()
        providers.append(
            {
                "name": name,
                "keys": [
                    {k: s[k] for k in ("key_id", "state", "retry_in_s", "reason", "requests_today")}
                    for s in states
                ],
            }
        )
    return json_response({"timestamp": time.time(), "providers": providers})
