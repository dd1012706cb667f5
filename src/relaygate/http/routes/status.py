"""Open routes (health, the dashboard, its static files and data), the seed route GET /keys/status
and the dashboard's admin data (`admin_router`, included only when an admin secret is set)."""

from __future__ import annotations

import functools
import logging
import time
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from fastapi import APIRouter
from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from relaygate.gateway import Gateway
from relaygate.http._common import (
    fresh_read,
    gateway,
    is_admin,
    json_response,
    require_admin,
    require_client,
)
from relaygate.state.protocols import LedgerStore
from relaygate.web.dashboard import admin_numbers, public_numbers

log = logging.getLogger("relaygate.http")
router = APIRouter()
admin_router = APIRouter(tags=["admin"])

# the only files served from relaygate/web, with their content types
STATIC = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
_PAGE_HEADERS = {
    # everything the page uses comes from here: no other origin, no inline script
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}
CACHE_S = 1.0  # /status.json is open: the database answers it at most once a second
_KEY_FIELDS = (
    "key_id",
    "bucket",
    "state",
    "until",
    "retry_in_s",
    "reason",
    "requests_today",
    "tokens_today",
)


@functools.cache  # a few small files of the installed package, read once
def _web_file(name: str) -> bytes:
    return resources.files("relaygate.web").joinpath(name).read_bytes()


@router.get("/health", tags=["open"], summary="Liveness")
async def health() -> Response:
    return json_response({"status": "healthy", "timestamp": datetime.now(UTC).isoformat()})


@router.get("/keys/status", tags=["client"], summary="Upstream key states (key ids only)")
async def keys_status(request: Request) -> Response:
    if not is_admin(request):
        require_client(request)
    gw = gateway(request)
    return json_response({"timestamp": time.time(), "keys": gw.key_states()})


@router.get("/", tags=["open"], summary="Dashboard", response_class=HTMLResponse)
async def dashboard_page() -> Response:
    return Response(_web_file("dashboard.html"), media_type="text/html", headers=_PAGE_HEADERS)


def _static(name: str) -> Response:
    return Response(_web_file(name), media_type=STATIC[name], headers=_PAGE_HEADERS)


@router.get("/static/dashboard.js", tags=["open"], summary="The dashboard's script")
async def dashboard_js() -> Response:
    return _static("dashboard.js")


@router.get("/static/charts.js", tags=["open"], summary="The dashboard's charts")
async def charts_js() -> Response:
    return _static("charts.js")


@router.get("/static/dashboard.css", tags=["open"], summary="The dashboard's style sheet")
async def dashboard_css() -> Response:
    return _static("dashboard.css")


def _providers(gw: Gateway) -> list[dict[str, Any]]:
    out = []
    for name, pool in gw.pools.items():
        states = pool.states()
        keys = [{k: s.get(k) for k in _KEY_FIELDS} for s in states]
        for key in keys:
            key["reason"] = gw.redact(key["reason"]) if key["reason"] else None
        paused = states[0].get("pool_paused_for_s") if states else None
        out.append({"name": name, "paused_for_s": paused, "keys": keys})
    return out


def _counts(counter: Counter) -> list[tuple[dict[str, str], int]]:
    return [
        (dict(sample.labels), int(sample.value))
        for metric in counter.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.value
    ]


def _since_start(gw: Gateway) -> dict[str, Any]:
    """Counters since this process started: refusals (never in the ledger) and upstream attempts."""
    metrics = gw.accounting.metrics
    return {
        "refusals": {labels["reason"]: n for labels, n in _counts(metrics.refusals)},
        "attempts": [
            {"provider": labels["provider"], "outcome": labels["outcome"], "count": n}
            for labels, n in _counts(metrics.attempts)
        ],
        "ledger_queue": gw.accounting.ledger.depth,
        "ledger_dropped": gw.accounting.ledger.dropped,
        "cache": _cache_figures(gw),
    }


def _cache_figures(gw: Gateway) -> dict[str, Any] | None:
    """The response cache since start: lookups by result, hit ratio, money saved (None: off)."""
    if gw.cache is None:
        return None
    metrics = gw.accounting.metrics
    words = {"hit": 0, "miss": 0, "bypass": 0}
    for labels, n in _counts(metrics.cache):
        words[labels["result"]] = words.get(labels["result"], 0) + n
    looked = words["hit"] + words["miss"]
    saved = sum(
        s.value
        for m in metrics.cache_saved.collect()
        for s in m.samples
        if s.name.endswith("_total")
    )
    return {
        "hits": words["hit"],
        "misses": words["miss"],
        "bypass": words["bypass"],
        "hit_ratio": round(words["hit"] / looked, 4) if looked else None,
        "saved_usd": round(saved, 6),
    }


async def _public_numbers(request: Request, store: LedgerStore, now: float) -> dict[str, Any]:
    """The database part of /status.json, computed at most once a second however many look."""
    state = request.app.state
    cached = getattr(state, "dashboard_numbers", None)
    if cached is not None and 0 <= now - cached[0] < CACHE_S:
        numbers: dict[str, Any] = cached[1]
        return numbers
    numbers = await fresh_read(gateway(request), public_numbers, store, now)
    state.dashboard_numbers = (now, numbers)
    return numbers


@router.get("/status.json", tags=["open"], summary="Data of the dashboard (no secrets, no clients)")
async def status_data(request: Request) -> Response:
    gw = gateway(request)
    now = time.time()
    data: dict[str, Any] = {
        "timestamp": now,
        "admin": bool(gw.config.admin_secret),
        "providers": _providers(gw),
        "since_start": _since_start(gw),
    }
    store = gw.ledger_store
    if store is not None:
        data |= await _public_numbers(request, store, now)  # a 503 within 2 s when it fails
    return json_response(data, headers={"cache-control": "no-store"})


@admin_router.get("/admin/dashboard.json", summary="The dashboard's admin data (spend by client)")
async def admin_dashboard(request: Request) -> Response:
    require_admin(request)
    gw = gateway(request)
    now = time.time()
    data: dict[str, Any] = {"now": now, "spend_by_client": None, "failures": []}
    store = gw.ledger_store
    if store is not None:
        data = await fresh_read(gw, admin_numbers, store, now)
    return json_response(data, headers={"cache-control": "no-store"})
