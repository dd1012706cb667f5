"""Admin routes for usage: the report of GET /admin/usage, the failure log, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from relaygate.errors import InvalidRequest
from relaygate.http._common import fresh_read, gateway, json_response, require_admin
from relaygate.usage.metrics import CONTENT_TYPE
from relaygate.usage.reports import failures, usage_report

router = APIRouter(tags=["admin"])


@router.get("/admin/usage", summary="Usage by client, provider, model, key or day")
async def admin_usage(
    request: Request, by: str = "client", day: str | None = None, month: str | None = None
) -> Response:
    require_admin(request)
    gw = gateway(request)
    if gw.ledger_store is None:
        raise InvalidRequest("Usage reports need a database (DATABASE_URL).")
    report = await fresh_read(gw, usage_report, gw.ledger_store, by=by, day=day, month=month)
    return json_response(report)


@router.get("/admin/failures", summary="The latest failed upstream calls (redacted)")
async def admin_failures(request: Request, limit: int = 50) -> Response:
    require_admin(request)
    gw = gateway(request)
    if gw.ledger_store is None:
        raise InvalidRequest("The failure log needs a database (DATABASE_URL).")
    rows = await fresh_read(gw, failures, gw.ledger_store, limit=limit)
    return json_response({"data": rows})


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    require_admin(request)
    return Response(gateway(request).accounting.metrics.render(), media_type=CONTENT_TYPE)
