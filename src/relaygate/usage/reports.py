"""Usage reports from the daily aggregates: requests, errors, tokens, cost and latency, grouped
by client, provider, model, key or day, for one day or one month (UTC)."""

from __future__ import annotations

import re
import time
from typing import Any, Literal

from relaygate.errors import InvalidRequest
from relaygate.storage.sqlite import SQLiteStore
from relaygate.usage.ledger import NOT_ERRORS

GroupBy = Literal["client", "provider", "model", "key", "day"]
GROUPS: dict[str, str] = {
    "client": "client_id",  # two clients of one name are two rows; the name is their latest
    "provider": "provider",
    "model": "model",
    "key": "key_id",
    "day": "day",
}
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MONTH = re.compile(r"^\d{4}-\d{2}$")


def period(day: str | None, month: str | None) -> tuple[str, str]:
    """(label, LIKE pattern) of the period asked for; today (UTC) by default."""
    if day and month:
        raise InvalidRequest("Give a day or a month, not both.")
    if month:
        if not _MONTH.match(month):
            raise InvalidRequest("month must look like 2026-11.", param="month")
        return month, f"{month}-%"
    day = day or time.strftime("%Y-%m-%d", time.gmtime())
    if not _DAY.match(day):
        raise InvalidRequest("day must look like 2026-11-24.", param="day")
    return day, day


def usage_report(
    store: SQLiteStore, *, by: str = "client", day: str | None = None, month: str | None = None
) -> dict[str, Any]:
    if by not in GROUPS:
        raise InvalidRequest(f"by must be one of: {', '.join(GROUPS)}.", param="by")
    label, pattern = period(day, month)
    column = GROUPS[by]  # one of a fixed set of column names, never user text
    name = "MAX(client) AS name, client_id" if by == "client" else f"{column} AS name"
    rows = store.query(
        f"SELECT {name}, SUM(requests) AS requests, SUM(errors) AS errors, "  # noqa: S608
        "SUM(prompt_tokens) AS prompt_tokens, SUM(completion_tokens) AS completion_tokens, "
        "SUM(cached_tokens) AS cached_tokens, SUM(cost_usd) AS cost_usd, "
        "SUM(latency_ms_sum) AS latency_ms_sum "
        f"FROM usage_daily WHERE day LIKE ? GROUP BY {column} ORDER BY cost_usd DESC, name",
        (pattern,),
    )
    for row in rows:
        total = row.pop("latency_ms_sum") or 0
        row["avg_latency_ms"] = round(total / row["requests"], 1) if row["requests"] else 0
        row["cost_usd"] = round(row["cost_usd"] or 0.0, 6)
        row["name"] = row["name"] or "(none)"
    totals = {
        k: sum(r[k] for r in rows)
        for k in ("requests", "errors", "prompt_tokens", "completion_tokens", "cached_tokens")
    }
    totals["cost_usd"] = round(sum(r["cost_usd"] for r in rows), 6)
    return {"period": label, "by": by, "rows": rows, "totals": totals}


def failures(store: SQLiteStore, *, limit: int = 50) -> list[dict[str, Any]]:
    """The latest failed calls (status >= 400 or an in-stream error): the redacted failure log."""
    return store.query(
        "SELECT id, ts, client, route, provider, model, key_id, status, error_code, latency_ms, "
        "attempts FROM ledger WHERE (status >= 400 OR error_code IS NOT NULL) "
        "AND COALESCE(error_code, '') NOT IN (?, ?) ORDER BY ts DESC LIMIT ?",
        (*NOT_ERRORS, max(1, min(limit, 1000))),
    )
