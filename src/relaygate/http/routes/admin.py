"""Admin routes (admin secret): upstream key states, enable and disable."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from relaygate.errors import NotFound
from relaygate.http._common import gateway, json_response, require_admin

router = APIRouter(tags=["admin"])


@router.get("/admin/keys", summary="Upstream key states")
async def admin_keys(request: Request) -> Response:
    require_admin(request)
    return json_response({"keys": gateway(request).key_states()})


async def _set_key(request: Request, key_id: str, enable: bool) -> Response:
    require_admin(request)
    gw = gateway(request)
    for pool in gw.pools.values():
        key = pool.find(key_id)
        if key is not None:
            pool.enable(key) if enable else pool.disable(key)
            await gw.flush()
            return json_response({"key": key.public(pool.clock())})
    raise NotFound(f"No upstream key with id '{key_id}'.", param="key_id")


@router.post("/admin/keys/{key_id}/enable", summary="Re-enable an upstream key")
async def enable_key(request: Request, key_id: str) -> Response:
    return await _set_key(request, key_id, True)


@router.post("/admin/keys/{key_id}/disable", summary="Disable an upstream key")
async def disable_key(request: Request, key_id: str) -> Response:
    return await _set_key(request, key_id, False)
