"""The dashboard's numbers: bounded aggregate queries over the ledger and the daily table.

Functions over the state seam's LedgerStore, awaited by the routes. `public_numbers` is
what anyone may see (no client names, no keys); `admin_numbers` adds spend by client and the
latest failures, for the admin only. Every query is bounded by a time window or a LIMIT."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

from relaygate.state.protocols import LedgerStore
from relaygate.state.records import SpendGroup
from relaygate.usage.reports import failures

MINUTES = 60  # the "last hour" charts, one bucket a minute
DAYS = 14  # the "last 14 days" charts, one bucket a day (UTC)
LATENCY_ROWS = 20_000  # the latest successful requests of the last hour, at most
TOP = 12  # rows in the spend tables
TOP_ERRORS = 8  # rows in the error table


def utc_day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def percentile(ordered: Sequence[int], q: float) -> int | None:
    """Nearest-rank percentile of an ascending sequence (None when empty)."""
    if not ordered:
        return None
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered))))
    return ordered[rank - 1]


def _latency(values: Iterable[int]) -> dict[str, Any]:
    ordered = sorted(values)
    avg = round(sum(ordered) / len(ordered), 1) if ordered else None
    return {
        "count": len(ordered),
        "avg_ms": avg,
        "p50_ms": percentile(ordered, 0.50),
        "p95_ms": percentile(ordered, 0.95),
        "p99_ms": percentile(ordered, 0.99),
    }


async def minutes(store: LedgerStore, now: float) -> list[dict[str, Any]]:
    """Requests and errors per minute over the last hour, oldest first, empty minutes as 0."""
    last = int(now // 60)
    first = last - MINUTES + 1
    found = {r.minute: r for r in await store.minutes(first * 60.0)}
    out = []
    for m in range(first, last + 1):
        r = found.get(m)
        out.append(
            {
                "t": m * 60,
                "requests": r.requests if r else 0,
                "errors": r.errors if r else 0,
                "tokens": r.tokens if r else 0,
                "cost_usd": round(r.cost_usd, 6) if r else 0.0,
            }
        )
    return out


async def days(store: LedgerStore, now: float) -> list[dict[str, Any]]:
    """Requests, errors, tokens and spend per UTC day over the last 14 days, oldest first."""
    wanted = [utc_day(now - 86400 * back) for back in range(DAYS - 1, -1, -1)]
    found = {r.day: r for r in await store.days(wanted[0], wanted[-1])}
    out = []
    for day in wanted:
        r = found.get(day)
        out.append(
            {
                "day": day,
                "requests": r.requests if r else 0,
                "errors": r.errors if r else 0,
                "tokens": r.tokens if r else 0,
                "cost_usd": round(r.cost_usd, 6) if r else 0.0,
            }
        )
    return out


async def _spend_rows(store: LedgerStore, group: SpendGroup, since: str) -> list[dict[str, Any]]:
    return [
        {
            "name": r.name or "(none)",
            "requests": r.requests,
            "errors": r.errors,
            "tokens": r.tokens,
            "cost_usd": round(r.cost_usd, 6),
        }
        for r in await store.spend(group, since, TOP)
    ]


async def spend(
    store: LedgerStore, now: float, group: SpendGroup
) -> dict[str, list[dict[str, Any]]]:
    """Spend by model (`provider/model`), provider or client, today and over 14 days (UTC)."""
    return {
        "today": await _spend_rows(store, group, utc_day(now)),
        "days14": await _spend_rows(store, group, utc_day(now - 86400 * (DAYS - 1))),
    }


async def latency(store: LedgerStore, now: float) -> dict[str, Any]:
    """Latency of the successful requests of the last hour: overall, per provider, per minute."""
    since = (int(now // 60) - MINUTES + 1) * 60.0
    rows = await store.latencies(since, LATENCY_ROWS)
    overall = _latency(r.latency_ms for r in rows)
    ttft = sorted(r.ttft_ms for r in rows if r.ttft_ms is not None)
    overall["ttft_p50_ms"] = percentile(ttft, 0.50)
    by_provider: dict[str, list[int]] = {}
    by_minute: dict[int, list[int]] = {}
    for r in rows:
        by_provider.setdefault(r.provider or "(none)", []).append(r.latency_ms)
        by_minute.setdefault(int(r.ts // 60), []).append(r.latency_ms)
    first = int(since // 60)
    series = []
    for m in range(first, first + MINUTES):
        stats = _latency(by_minute.get(m, ()))
        series.append({"t": m * 60, "avg_ms": stats["avg_ms"], "p95_ms": stats["p95_ms"]})
    return {
        **overall,
        "sampled": len(rows) >= LATENCY_ROWS,
        "providers": [{"name": n, **_latency(v)} for n, v in sorted(by_provider.items())],
        "minutes": series,
    }


async def errors(store: LedgerStore, now: float) -> list[dict[str, Any]]:
    """Failed requests of the last hour by status and error code."""
    since = (int(now // 60) - MINUTES + 1) * 60.0
    return [dataclasses.asdict(r) for r in await store.errors(since, TOP_ERRORS)]


async def public_numbers(store: LedgerStore, now: float) -> dict[str, Any]:
    """Everything of the open dashboard that comes from the database; nothing names a client."""
    per_day = await days(store, now)
    return {
        "today": dict(per_day[-1]),
        "minutes": await minutes(store, now),
        "days": per_day,
        "spend_by_model": await spend(store, now, "model"),
        "spend_by_provider": await spend(store, now, "provider"),
        "latency": await latency(store, now),
        "errors": await errors(store, now),
    }


async def admin_numbers(store: LedgerStore, now: float) -> dict[str, Any]:
    """What only the admin sees: spend by client and the latest failed calls (redacted rows)."""
    return {
        "now": now,
        "spend_by_client": await spend(store, now, "client"),
        "failures": await failures(store, limit=10),
    }
