"""The dashboard's numbers: bounded aggregate queries over the ledger and the daily table.

Plain functions over a SQLiteStore, called in a worker thread by the routes. `public_numbers` is
what anyone may see (no client names, no keys); `admin_numbers` adds spend by client and the
latest failures, for the admin only. Every query is bounded by a time window or a LIMIT."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

from relaygate.storage.sqlite import SQLiteStore
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


def minutes(store: SQLiteStore, now: float) -> list[dict[str, Any]]:
    """Requests and errors per minute over the last hour, oldest first, empty minutes as 0."""
    last = int(now // 60)
    first = last - MINUTES + 1
    rows = store.query(
        "SELECT CAST(ts / 60 AS INTEGER) AS m, COUNT(*) AS requests, "
        "SUM(CASE WHEN status >= 400 OR error_code IS NOT NULL THEN 1 ELSE 0 END) AS errors, "
        "SUM(prompt_tokens + completion_tokens) AS tokens, SUM(cost_usd) AS cost_usd "
        "FROM ledger WHERE ts >= ? GROUP BY m",
        (first * 60.0,),
    )
    found = {int(r["m"]): r for r in rows}
    out = []
    for m in range(first, last + 1):
        r = found.get(m, {})
        out.append(
            {
                "t": m * 60,
                "requests": int(r.get("requests") or 0),
                "errors": int(r.get("errors") or 0),
                "tokens": int(r.get("tokens") or 0),
                "cost_usd": round(float(r.get("cost_usd") or 0.0), 6),
            }
        )
    return out


def days(store: SQLiteStore, now: float) -> list[dict[str, Any]]:
    """Requests, errors, tokens and spend per UTC day over the last 14 days, oldest first."""
    wanted = [utc_day(now - 86400 * back) for back in range(DAYS - 1, -1, -1)]
    rows = store.query(
        "SELECT day, SUM(requests) AS requests, SUM(errors) AS errors, "
        "SUM(prompt_tokens + completion_tokens) AS tokens, SUM(cost_usd) AS cost_usd "
        "FROM usage_daily WHERE day >= ? AND day <= ? GROUP BY day",
        (wanted[0], wanted[-1]),
    )
    found = {r["day"]: r for r in rows}
    return [
        {
            "day": day,
            "requests": int(found.get(day, {}).get("requests") or 0),
            "errors": int(found.get(day, {}).get("errors") or 0),
            "tokens": int(found.get(day, {}).get("tokens") or 0),
            "cost_usd": round(float(found.get(day, {}).get("cost_usd") or 0.0), 6),
        }
        for day in wanted
    ]


# what spend is grouped by: fixed SQL expressions chosen here, never user text
GROUPS = {
    "model": "CASE WHEN provider = '' THEN model ELSE provider || '/' || model END",
    "provider": "provider",
    "client": "client_id",  # shown by its latest name
}


def _spend_rows(store: SQLiteStore, group: str, since: str) -> list[dict[str, Any]]:
    expr = GROUPS[group]
    rows = store.query(
        f"SELECT {expr} AS grp, MAX({'client' if group == 'client' else expr}) AS name, "  # noqa: S608
        "SUM(requests) AS requests, SUM(errors) AS errors, "
        "SUM(prompt_tokens + completion_tokens) AS tokens, SUM(cost_usd) AS cost_usd "
        "FROM usage_daily WHERE day >= ? GROUP BY grp "
        "ORDER BY cost_usd DESC, requests DESC, name LIMIT ?",
        (since, TOP),
    )
    return [
        {
            "name": r["name"] or "(none)",
            "requests": int(r["requests"] or 0),
            "errors": int(r["errors"] or 0),
            "tokens": int(r["tokens"] or 0),
            "cost_usd": round(float(r["cost_usd"] or 0.0), 6),
        }
        for r in rows
    ]


def spend(store: SQLiteStore, now: float, group: str) -> dict[str, list[dict[str, Any]]]:
    """Spend by model (`provider/model`), provider or client, today and over 14 days (UTC)."""
    return {
        "today": _spend_rows(store, group, utc_day(now)),
        "days14": _spend_rows(store, group, utc_day(now - 86400 * (DAYS - 1))),
    }


def latency(store: SQLiteStore, now: float) -> dict[str, Any]:
    """Latency of the successful requests of the last hour: overall, per provider, per minute."""
    since = (int(now // 60) - MINUTES + 1) * 60.0
    rows = store.query(
        "SELECT ts, provider, latency_ms, ttft_ms FROM ledger "
        "WHERE ts >= ? AND status < 400 AND error_code IS NULL ORDER BY ts DESC LIMIT ?",
        (since, LATENCY_ROWS),
    )
    overall = _latency(r["latency_ms"] for r in rows)
    ttft = sorted(r["ttft_ms"] for r in rows if r["ttft_ms"] is not None)
    overall["ttft_p50_ms"] = percentile(ttft, 0.50)
    by_provider: dict[str, list[int]] = {}
    by_minute: dict[int, list[int]] = {}
    for r in rows:
        by_provider.setdefault(r["provider"] or "(none)", []).append(r["latency_ms"])
        by_minute.setdefault(int(r["ts"] // 60), []).append(r["latency_ms"])
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


def errors(store: SQLiteStore, now: float) -> list[dict[str, Any]]:
    """Failed requests of the last hour by status and error code."""
    since = (int(now // 60) - MINUTES + 1) * 60.0
    return store.query(
        "SELECT status, error_code, provider, COUNT(*) AS count FROM ledger "
        "WHERE ts >= ? AND (status >= 400 OR error_code IS NOT NULL) "
        "GROUP BY status, error_code, provider "
        "ORDER BY count DESC, status LIMIT ?",
        (since, TOP_ERRORS),
    )


def public_numbers(store: SQLiteStore, now: float) -> dict[str, Any]:
    """Everything of the open dashboard that comes from the database; nothing names a client."""
    per_day = days(store, now)
    return {
        "today": dict(per_day[-1]),
        "minutes": minutes(store, now),
        "days": per_day,
        "spend_by_model": spend(store, now, "model"),
        "spend_by_provider": spend(store, now, "provider"),
        "latency": latency(store, now),
        "errors": errors(store, now),
    }


def admin_numbers(store: SQLiteStore, now: float) -> dict[str, Any]:
    """What only the admin sees: spend by client and the latest failed calls (redacted rows)."""
    return {
        "now": now,
        "spend_by_client": spend(store, now, "client"),
        "failures": failures(store, limit=10),
    }
