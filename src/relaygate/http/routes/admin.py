"""Admin routes (admin secret): upstream key states, enable and disable."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from relaygate.errors import NotFound
from relaygate.http._common import DB_TIMEOUT_S, gateway, json_response, require_admin
from relaygate.state import StateUnavailable

router = APIRouter(tags=["admin"])
log = logging.getLogger("relaygate.admin")


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
            try:  # in force now; saved now, or by the next flush when the database is away
                async with asyncio.timeout(DB_TIMEOUT_S):
                    await gw.flush()
            except (TimeoutError, StateUnavailable, OSError) as exc:
                log.warning("key state not saved yet (%s): saved later", type(exc).__name__)
            return json_response({"key": key.public(pool.clock())})
    raise NotFound(f"No upstream key with id '{key_id}'.", param="key_id")


@router.post("/admin/keys/{key_id}/enable", summary="Re-enable an upstream key")
async def enable_key(request: Request, key_id: str) -> Response:
    return await _set_key(request, key_id, True)


@router.post("/admin/keys/{key_id}/disable", summary="Disable an upstream key")
async def disable_key(request: Request, key_id: str) -> Response:
    return await _set_key(request, key_id, False)
