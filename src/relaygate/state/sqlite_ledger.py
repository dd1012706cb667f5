"""The SQLite ledger: one row per proxied request in `ledger`, and the daily aggregates per
(day, client id, provider, model, key id) in `usage_daily`, written together in one transaction.
Reads give the usage reports and the dashboard's numbers as the typed records of
`state.records` (what the dashboard makes of them, empty minutes and percentiles, is its own).
A row counts as an error when its status is >= 400 or it has an error code, unless the code is
one of NOT_ERRORS (the client went away). A client is named by the name of its latest row."""

from __future__ import annotations

import itertools
import sqlite3
import time
from collections.abc import Iterable, Sequence
from typing import Any

from relaygate.state.protocols import NOT_ERRORS
from relaygate.state.records import (
    DayRow,
    ErrorCount,
    FailureRow,
    LatencySample,
    LedgerRecord,
    MinuteRow,
    SpendGroup,
    SpendRow,
    UsageGroup,
    UsageRow,
)
from relaygate.state.sqlite_db import SQLiteDB

_COLUMNS = (
    "id, ts, day, client_id, client, route, provider, model, key_id, status, error_code, "
    "latency_ms, ttft_ms, prompt_tokens, completion_tokens, cached_tokens, cost_usd, cache, "
    "stream, attempts, estimated"
)
_ONE_ROW = "(" + ", ".join(["?"] * 21) + ")"
_ROWS_PER_INSERT = 400  # 8,400 bound values, under SQLite's limit (32,766 since 3.32)
_ADD_DAILY = """
INSERT INTO usage_daily (day, client_id, provider, model, key_id, client, client_ts, requests,
                         errors, prompt_tokens, completion_tokens, cached_tokens, cost_usd,
                         latency_ms_sum)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (day, client_id, provider, model, key_id) DO UPDATE SET
    client = CASE WHEN excluded.client_ts >= client_ts THEN excluded.client ELSE client END,
    client_ts = MAX(client_ts, excluded.client_ts),
    requests = requests + excluded.requests, errors = errors + excluded.errors,
    prompt_tokens = prompt_tokens + excluded.prompt_tokens,
    completion_tokens = completion_tokens + excluded.completion_tokens,
    cached_tokens = cached_tokens + excluded.cached_tokens,
    cost_usd = cost_usd + excluded.cost_usd,
    latency_ms_sum = latency_ms_sum + excluded.latency_ms_sum
"""
# a failed row, in SQL (its parameters: NOT_ERRORS)
_FAILED = (
    "(status >= 400 OR error_code IS NOT NULL) "
    f"AND COALESCE(error_code, '') NOT IN ({', '.join(['?'] * len(NOT_ERRORS))})"
)
_ERROR = f"CASE WHEN {_FAILED} THEN 1 ELSE 0 END"
# what usage reports and spend group by: fixed SQL chosen here, never user text
_USAGE_GROUPS = {
    "client": "client_id",
    "provider": "provider",
    "model": "model",
    "key": "key_id",
    "day": "day",
}
_SPEND_GROUPS = {
    "model": "CASE WHEN provider = '' THEN model ELSE provider || '/' || model END",
    "provider": "provider",
    "client": "client_id",
}
# the daily aggregates of the days asked for, with each client's latest name (equal times: the
# greater name) in `latest`; the one parameter is the days' condition's
_WITH_LATEST = (
    "(SELECT *, FIRST_VALUE(client) OVER (PARTITION BY client_id "
    "ORDER BY client_ts DESC, client DESC) AS latest FROM usage_daily WHERE {})"
)
_SUMS = "SUM(requests), SUM(errors), SUM(prompt_tokens + completion_tokens), SUM(cost_usd)"
PRUNE_BATCH = 5000  # rows per DELETE: each write transaction stays short
PRUNE_BUDGET_S = 4.0  # one prune deletes batches this long at most; the next one goes on


def failed(row: LedgerRecord) -> bool:
    code = row.error_code
    return (row.status >= 400 or code is not None) and code not in NOT_ERRORS


def _values(r: LedgerRecord) -> tuple[Any, ...]:
    return (
        *(r.id, r.ts, r.day, r.client_id, r.client, r.route, r.provider, r.model, r.key_id),
        *(r.status, r.error_code, r.latency_ms, r.ttft_ms, r.prompt_tokens, r.completion_tokens),
        *(r.cached_tokens, r.cost_usd, r.cache, int(r.stream), r.attempts, int(r.estimated)),
    )


def _write(db: sqlite3.Connection, rows: Sequence[LedgerRecord]) -> None:
    """In the caller's transaction: the rows in multi-row INSERTs (one statement per 400 rows
    instead of one per row: the GIL is released and retaken per statement), then the daily
    aggregates of the rows really inserted (a row id written before is ignored, and counted
    nowhere), added once per (day, client, provider, model, key) instead of once per row."""
    inserted: set[str] = set()
    for i in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[i : i + _ROWS_PER_INSERT]
        values = list(itertools.chain.from_iterable(map(_values, chunk)))
        sql = (
            f"INSERT OR IGNORE INTO ledger ({_COLUMNS}) VALUES "  # noqa: S608
            + ", ".join([_ONE_ROW] * len(chunk))
            + " RETURNING id"
        )
        inserted.update(str(found[0]) for found in db.execute(sql, values).fetchall())
    new = []
    for r in rows:  # the first of a batch's rows of one id is the one stored
        if r.id in inserted:
            inserted.discard(r.id)
            new.append(r)
    daily = _aggregate(new)
    db.executemany(_ADD_DAILY, [(*key, *daily[key]) for key in sorted(daily)])


def _aggregate(rows: Iterable[LedgerRecord]) -> dict[tuple[str, ...], list[Any]]:
    """The daily sums of new rows: per (day, client id, provider, model, key id), the client's
    name in the latest row and that row's time (equal times: the later row), then requests,
    errors, tokens, cost and latency."""
    daily: dict[tuple[str, ...], list[Any]] = {}
    for r in rows:
        key = (r.day, r.client_id or "", r.provider or "", r.model or "", r.key_id or "")
        acc = daily.get(key)
        if acc is None:
            acc = daily[key] = ["", float("-inf"), 0, 0, 0, 0, 0, 0.0, 0]
        if r.ts >= acc[1]:
            acc[0], acc[1] = r.client or "", r.ts
        acc[2] += 1
        acc[3] += int(failed(r))
        acc[4] += r.prompt_tokens
        acc[5] += r.completion_tokens
        acc[6] += r.cached_tokens
        acc[7] += r.cost_usd
        acc[8] += r.latency_ms
    return daily


def _days_like(period: str) -> str:
    """The LIKE pattern of a period: a day '2026-12-05' or a month '2026-12'."""
    return f"{period}-%" if len(period) == 7 else period


class SQLiteLedger:
    """LedgerStore in the `ledger` and `usage_daily` tables."""

    def __init__(self, db: SQLiteDB) -> None:
        self._db = db

    async def write(self, rows: Sequence[LedgerRecord]) -> None:
        if rows:
            await self._db.awrite(lambda db: _write(db, rows))

    async def usage(self, by: UsageGroup, period: str) -> list[UsageRow]:
        column = _USAGE_GROUPS[by]
        if by == "client":
            name, source = "MAX(latest)", _WITH_LATEST.format("day LIKE ?")
        else:
            name, source = column, "usage_daily WHERE day LIKE ?"
        rows = await self._db.fetch(
            f"SELECT {name} AS name, SUM(requests), SUM(errors), SUM(prompt_tokens), "  # noqa: S608
            "SUM(completion_tokens), SUM(cached_tokens), SUM(cost_usd), SUM(latency_ms_sum), "
            f"{'client_id' if by == 'client' else 'NULL'} FROM {source} "
            f"GROUP BY {column} ORDER BY SUM(cost_usd) DESC, name",
            (_days_like(period),),
        )
        return [UsageRow(*row) for row in rows]

    async def month_spend(self, month: str) -> dict[str, float]:
        rows = await self._db.fetch(
            "SELECT client_id, SUM(cost_usd) FROM usage_daily WHERE day LIKE ? GROUP BY client_id",
            (f"{month}-%",),
        )
        return {str(client_id): float(cost or 0.0) for client_id, cost in rows}

    async def failures(self, limit: int) -> list[FailureRow]:
        rows = await self._db.fetch(
            "SELECT id, ts, client, route, provider, model, key_id, status, error_code, "  # noqa: S608
            f"latency_ms, attempts FROM ledger WHERE {_FAILED} "
            "ORDER BY ts DESC, id DESC LIMIT ?",
            (*NOT_ERRORS, max(0, limit)),
        )
        return [FailureRow(*row) for row in rows]

    async def minutes(self, since_ts: float) -> list[MinuteRow]:
        rows = await self._db.fetch(
            f"SELECT CAST(ts / 60 AS INTEGER) AS m, COUNT(*), SUM({_ERROR}), "  # noqa: S608
            "SUM(prompt_tokens + completion_tokens), SUM(cost_usd) "
            "FROM ledger WHERE ts >= ? GROUP BY m ORDER BY m",
            (*NOT_ERRORS, since_ts),
        )
        return [MinuteRow(*row) for row in rows]

    async def days(self, first: str, last: str) -> list[DayRow]:
        rows = await self._db.fetch(
            f"SELECT day, {_SUMS} FROM usage_daily "  # noqa: S608
            "WHERE day >= ? AND day <= ? GROUP BY day ORDER BY day",
            (first, last),
        )
        return [DayRow(*row) for row in rows]

    async def spend(self, group: SpendGroup, since_day: str, limit: int) -> list[SpendRow]:
        expr = _SPEND_GROUPS[group]
        if group == "client":
            name, source = "MAX(latest)", _WITH_LATEST.format("day >= ?")
        else:
            name, source = f"MAX({expr})", "usage_daily WHERE day >= ?"
        rows = await self._db.fetch(
            f"SELECT {name} AS name, {_SUMS} FROM {source} GROUP BY {expr} "  # noqa: S608
            "ORDER BY SUM(cost_usd) DESC, SUM(requests) DESC, name LIMIT ?",
            (since_day, max(0, limit)),
        )
        return [SpendRow(*row) for row in rows]

    async def latencies(self, since_ts: float, limit: int) -> list[LatencySample]:
        rows = await self._db.fetch(
            "SELECT ts, provider, latency_ms, ttft_ms FROM ledger "
            "WHERE ts >= ? AND status < 400 AND error_code IS NULL "
            "ORDER BY ts DESC, id DESC LIMIT ?",
            (since_ts, max(0, limit)),
        )
        return [LatencySample(*row) for row in rows]

    async def errors(self, since_ts: float, limit: int) -> list[ErrorCount]:
        rows = await self._db.fetch(
            "SELECT status, error_code, provider, COUNT(*) FROM ledger "  # noqa: S608
            f"WHERE ts >= ? AND {_FAILED} GROUP BY status, error_code, provider "
            "ORDER BY COUNT(*) DESC, status, error_code, provider LIMIT ?",
            (since_ts, *NOT_ERRORS, max(0, limit)),
        )
        return [ErrorCount(*row) for row in rows]

    async def prune(self, before_ts: float) -> int:
        """Rows older than `before_ts` deleted in batches, each its own short transaction, for
        PRUNE_BUDGET_S at most (the daily aggregates stay): the number deleted."""
        sql = "DELETE FROM ledger WHERE rowid IN (SELECT rowid FROM ledger WHERE ts < ? LIMIT ?)"
        params = (before_ts, PRUNE_BATCH)
        deleted = 0
        deadline = time.monotonic() + PRUNE_BUDGET_S
        while True:
            count = await self._db.awrite(lambda db: int(db.execute(sql, params).rowcount))
            deleted += count
            if count < PRUNE_BATCH or time.monotonic() >= deadline:
                return deleted

    async def aclose(self) -> None:
        await self._db.aclose()
