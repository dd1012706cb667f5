"""Admin routes for client keys: issue (the plain key is returned once), list, change limits,
revoke; and GET /current-key for the weekly rotating key. Store calls run in a worker thread."""

from __future__ import annotations

import time
from typing import Any, TypeVar

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from relaygate.auth.weekly import current_key_info
from relaygate.errors import InvalidRequest, NotFound
from relaygate.http._common import (
    db_call,
    db_write,
    gateway,
    json_response,
    read_json,
    require_admin,
)

router = APIRouter(tags=["admin"])
_BODY_LIMIT = 64 * 1024


M = TypeVar("M", bound=BaseModel)


_MAX_LIMIT = 10**12  # any real limit fits; SQLite's integers end at 2**63


class ClientLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rpm: int | None = Field(default=None, ge=1, le=_MAX_LIMIT)
    tpm: int | None = Field(default=None, ge=1, le=_MAX_LIMIT)
    monthly_budget_usd: float | None = Field(default=None, ge=0, le=_MAX_LIMIT, allow_inf_nan=False)
    models: list[str] | None = None


_NAME = r"^[^\x00-\x1f\x7f]+$"  # no control characters: names go to tables and reports


class ClientCreate(ClientLimits):
    name: str = Field(min_length=1, max_length=200, pattern=_NAME)


class ClientPatch(ClientLimits):
    # absent: unchanged; never null
    name: str = Field(default="", min_length=1, max_length=200, pattern=_NAME)


async def _parse(request: Request, model: type[M]) -> M:
    body, _ = await read_json(request, _BODY_LIMIT)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequest(f"{field}: {first['msg']}", param=field) from None


@router.get("/admin/clients", summary="List client keys (never the keys)")
async def list_clients(request: Request) -> Response:
    require_admin(request)
    gw = gateway(request)
    static = [
        {
            "name": c.name,
            "rpm": c.rpm,
            "tpm": c.tpm,
            "monthly_budget_usd": c.monthly_budget_usd,
            "models": c.models,
            "source": "static",
        }
        for c in gw.config.clients
    ]
    issued = await db_call(gw.clients.issued())
    month = time.strftime("%Y-%m", time.gmtime())
    # the ledger has every request's cost (rows wait up to a second in the buffer); the
    # admissions have the settled spend of budgeted clients at once: the larger is the truth
    store = gw.ledger_store
    ledger = await db_call(store.month_spend(month)) if store is not None else {}
    for item in issued:
        spent = await db_call(gw.state.admissions.spent(item["id"], month))
        item["spent_this_month_usd"] = round(max(spent, ledger.get(item["id"], 0.0)), 6)
    return json_response({"object": "list", "data": issued, "static": static})


@router.post("/admin/clients", summary="Issue a client key (shown once)", status_code=201)
async def create_client(request: Request) -> Response:
    require_admin(request)
    spec = await _parse(request, ClientCreate)
    gw = gateway(request)
    if not gw.persist:
        raise InvalidRequest("Issued keys need a database (DATABASE_URL).")
    limits: dict[str, Any] = spec.model_dump(exclude={"name"}, exclude_none=True)
    key, client = await db_write(gw.clients.issue(spec.name, **limits))
    return json_response({"key": key, "client": client}, status=201)


@router.patch("/admin/clients/{client_id}", summary="Change a client's limits")
async def update_client(request: Request, client_id: str) -> Response:
    require_admin(request)
    spec = await _parse(request, ClientPatch)
    changes = spec.model_dump(exclude_unset=True)
    changed = await db_write(gateway(request).clients.update(client_id, **changes))
    if changed is None:
        raise NotFound(f"No active client with id '{client_id}'.", param="client_id")
    return json_response({"client": changed})


@router.delete("/admin/clients/{client_id}", summary="Revoke a client key")
async def revoke_client(request: Request, client_id: str) -> Response:
    require_admin(request)
    if not await db_write(gateway(request).clients.revoke(client_id)):
        raise NotFound(f"No active client with id '{client_id}'.", param="client_id")
    return json_response({"id": client_id, "revoked": True})


@router.get("/current-key", summary="The weekly rotating client key (admin)")
async def current_key(request: Request) -> Response:
    require_admin(request)
    gw = gateway(request)
    if gw.config.client_key_rotation != "weekly" or not gw.config.admin_secret:
        raise NotFound("The weekly key is off: set CLIENT_KEY_ROTATION=weekly.")
    return json_response(current_key_info(gw.config.admin_secret, gw.clients.clock()))
