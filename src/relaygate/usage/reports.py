"""Usage reports from the daily aggregates: requests, errors, tokens, cost and latency, grouped
by client, provider, model, key or day, for one day or one month (UTC)."""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any, Literal, cast

from relaygate.errors import InvalidRequest
from relaygate.state.protocols import LedgerStore
from relaygate.state.records import UsageGroup

GroupBy = Literal["client", "provider", "model", "key", "day"]
# by client: two clients of one name are two rows; the name is their latest
GROUPS = ("client", "provider", "model", "key", "day")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MONTH = re.compile(r"^\d{4}-\d{2}$")


def period(day: str | None, month: str | None) -> tuple[str, str]:
    """(label, period for the store) of the period asked for; today (UTC) by default."""
    if day and month:
        raise InvalidRequest("Give a day or a month, not both.")
    if month:
        if not _MONTH.match(month):
            raise InvalidRequest("month must look like 2026-11.", param="month")
        return month, month
    day = day or time.strftime("%Y-%m-%d", time.gmtime())
    if not _DAY.match(day):
        raise InvalidRequest("day must look like 2026-11-24.", param="day")
    return day, day


async def usage_report(
    store: LedgerStore, *, by: str = "client", day: str | None = None, month: str | None = None
) -> dict[str, Any]:
    if by not in GROUPS:
        raise InvalidRequest(f"by must be one of: {', '.join(GROUPS)}.", param="by")
    label, when = period(day, month)
    rows: list[dict[str, Any]] = []
    for r in await store.usage(cast(UsageGroup, by), when):
        row: dict[str, Any] = {"name": r.name or "(none)"}
        if by == "client":
            row["client_id"] = r.client_id
        row |= {
            "requests": r.requests,
            "errors": r.errors,
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "cached_tokens": r.cached_tokens,
            "cost_usd": round(r.cost_usd or 0.0, 6),
            "avg_latency_ms": round(r.latency_ms_sum / r.requests, 1) if r.requests else 0,
        }
        rows.append(row)
    totals: dict[str, Any] = {
        k: sum(r[k] for r in rows)
        for k in ("requests", "errors", "prompt_tokens", "completion_tokens", "cached_tokens")
    }
    totals["cost_usd"] = round(sum(r["cost_usd"] for r in rows), 6)
    return {"period": label, "by": by, "rows": rows, "totals": totals}


async def failures(store: LedgerStore, *, limit: int = 50) -> list[dict[str, Any]]:
    """The latest failed calls (status >= 400 or an in-stream error): the redacted failure log."""
    rows = await store.failures(max(1, min(limit, 1000)))
    return [dataclasses.asdict(r) for r in rows]
