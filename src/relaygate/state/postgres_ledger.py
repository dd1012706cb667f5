"""The Postgres ledger: one row per proxied request in `ledger`, and the daily aggregates per
(day, client id, provider, model, key id) in `usage_daily`, written together in one transaction.
Reads give the answers the SQLite store gives (usage reports, the dashboard's numbers), as the
typed records of `state.records`. A row counts as an error when its status is >= 400 or it has
an error code, unless the code is one of NOT_ERRORS (the client went away)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from relaygate.state.postgres_db import PostgresDB
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

_COLUMNS = (
    "id, ts, day, client_id, client, route, provider, model, key_id, status, error_code, "
    "latency_ms, ttft_ms, prompt_tokens, completion_tokens, cached_tokens, cost_usd, cache, "
    "stream, attempts, estimated"
)
_INSERT = (
    f"INSERT INTO ledger ({_COLUMNS}) VALUES ({', '.join(['%s'] * 21)}) "  # noqa: S608
    "ON CONFLICT (id) DO NOTHING RETURNING id"
)
_ADD_DAILY = """
INSERT INTO usage_daily AS u (day, client_id, provider, model, key_id, client, client_ts,
                              requests, errors, prompt_tokens, completion_tokens, cached_tokens,
                              cost_usd, latency_ms_sum)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (day, client_id, provider, model, key_id) DO UPDATE SET
    client = CASE WHEN EXCLUDED.client_ts >= u.client_ts THEN EXCLUDED.client ELSE u.client END,
    client_ts = GREATEST(u.client_ts, EXCLUDED.client_ts),
    requests = u.requests + EXCLUDED.requests,
    errors = u.errors + EXCLUDED.errors,
    prompt_tokens = u.prompt_tokens + EXCLUDED.prompt_tokens,
    completion_tokens = u.completion_tokens + EXCLUDED.completion_tokens,
    cached_tokens = u.cached_tokens + EXCLUDED.cached_tokens,
    cost_usd = u.cost_usd + EXCLUDED.cost_usd,
    latency_ms_sum = u.latency_ms_sum + EXCLUDED.latency_ms_sum
"""
# a failed row, in SQL (the one parameter: NOT_ERRORS)
_FAILED = "(status >= 400 OR error_code IS NOT NULL) AND NOT COALESCE(error_code, '') = ANY(%s)"
_ERROR = f"CASE WHEN {_FAILED} THEN 1 ELSE 0 END"
# what usage reports group by: fixed column names chosen here, never user text
_USAGE_GROUPS = {
    "client": "client_id",
    "provider": "provider",
    "model": "model",
    "key": "key_id",
    "day": "day",
}
# a client's latest name: the one of its latest row (equal times: the greater name)
_LATEST_NAME = '(array_agg(client ORDER BY client_ts DESC, client COLLATE "C" DESC))[1]'
_SPEND_GROUPS = {
    "model": "CASE WHEN provider = '' THEN model ELSE provider || '/' || model END",
    "provider": "provider",
    "client": "client_id",  # named by its latest name
}
_SUMS = (
    "SUM(requests)::bigint, SUM(errors)::bigint, "
    "SUM(prompt_tokens + completion_tokens)::bigint, SUM(cost_usd)"
)
PRUNE_BATCH = 5000  # rows per DELETE, each well inside the statement timeout
PRUNE_BUDGET_S = 4.0  # one prune deletes batches this long at most; the next one goes on


def failed(row: LedgerRecord) -> bool:
    code = row.error_code
    return (row.status >= 400 or code is not None) and code not in NOT_ERRORS


def _days(period: str) -> tuple[str, str]:
    """The first and last day of a period: a day '2026-12-05' or a month '2026-12'."""
    if len(period) == 7:
        return f"{period}-01", f"{period}-31"
    return period, period


class PostgresLedger:
    """LedgerStore in the `ledger` and `usage_daily` tables."""

    def __init__(self, db: PostgresDB) -> None:
        self._db = db

    async def write(self, rows: Sequence[LedgerRecord]) -> None:
        if not rows:
            return
        # in id order: two writers of overlapping batches (a retried one) take the rows' index
        # locks in the same order, so neither waits for the other crosswise (a deadlock)
        rows = sorted(rows, key=lambda r: r.id)
        params = [
            (
                *(r.id, r.ts, r.day, r.client_id, r.client, r.route, r.provider, r.model),
                *(r.key_id, r.status, r.error_code, r.latency_ms, r.ttft_ms, r.prompt_tokens),
                *(r.completion_tokens, r.cached_tokens, r.cost_usd, r.cache, bool(r.stream)),
                *(r.attempts, bool(r.estimated)),
            )
            for r in rows
        ]
        async with self._db.connect() as conn, conn.transaction():
            cur = conn.cursor()
            await cur.executemany(_INSERT, params, returning=True)
            new = [await result.fetchone() is not None async for result in cur.results()]
            daily = _aggregate(r for r, inserted in zip(rows, new, strict=True) if inserted)
            if daily:  # in key order: two writers never wait for each other crosswise
                await cur.executemany(_ADD_DAILY, [(*k, *daily[k]) for k in sorted(daily)])

    async def usage(self, by: UsageGroup, period: str) -> list[UsageRow]:
        column = _USAGE_GROUPS[by]
        name = _LATEST_NAME if by == "client" else column
        rows = await self._db.fetch(
            f"SELECT {name}, SUM(requests)::bigint, SUM(errors)::bigint, "  # noqa: S608
            "SUM(prompt_tokens)::bigint, SUM(completion_tokens)::bigint, "
            "SUM(cached_tokens)::bigint, SUM(cost_usd), SUM(latency_ms_sum)::bigint, "
            f"{'client_id' if by == 'client' else 'NULL::text'} "
            f"FROM usage_daily WHERE day BETWEEN %s AND %s GROUP BY {column} "
            f'ORDER BY SUM(cost_usd) DESC, {name} COLLATE "C"',
            _days(period),
        )
        return [UsageRow(*row) for row in rows]

    async def month_spend(self, month: str) -> dict[str, float]:
        rows = await self._db.fetch(
            "SELECT client_id, SUM(cost_usd) FROM usage_daily WHERE day BETWEEN %s AND %s "
            "GROUP BY client_id",
            _days(month),
        )
        return {str(client_id): float(cost or 0.0) for client_id, cost in rows}

    async def failures(self, limit: int) -> list[FailureRow]:
        rows = await self._db.fetch(
            "SELECT id, ts, client, route, provider, model, key_id, status, error_code, "  # noqa: S608
            f"latency_ms, attempts FROM ledger WHERE {_FAILED} "
            "ORDER BY ts DESC, id DESC LIMIT %s",
            (list(NOT_ERRORS), max(0, limit)),
        )
        return [FailureRow(*row) for row in rows]

    async def minutes(self, since_ts: float) -> list[MinuteRow]:
        rows = await self._db.fetch(
            f"SELECT floor(ts / 60)::bigint AS m, COUNT(*), SUM({_ERROR})::bigint, "  # noqa: S608
            "SUM(prompt_tokens + completion_tokens)::bigint, SUM(cost_usd) "
            "FROM ledger WHERE ts >= %s GROUP BY m ORDER BY m",
            (list(NOT_ERRORS), since_ts),
        )
        return [MinuteRow(*row) for row in rows]

    async def days(self, first: str, last: str) -> list[DayRow]:
        rows = await self._db.fetch(
            f"SELECT day, {_SUMS} FROM usage_daily "  # noqa: S608
            "WHERE day >= %s AND day <= %s GROUP BY day ORDER BY day",
            (first, last),
        )
        return [DayRow(*row) for row in rows]

    async def spend(self, group: SpendGroup, since_day: str, limit: int) -> list[SpendRow]:
        expr = _SPEND_GROUPS[group]
        name = _LATEST_NAME if group == "client" else expr
        rows = await self._db.fetch(
            f"SELECT {name} AS name, {_SUMS} FROM usage_daily "  # noqa: S608
            f"WHERE day >= %s GROUP BY {expr} "
            f'ORDER BY SUM(cost_usd) DESC, SUM(requests) DESC, {name} COLLATE "C" LIMIT %s',
            (since_day, max(0, limit)),
        )
        return [SpendRow(*row) for row in rows]

    async def latencies(self, since_ts: float, limit: int) -> list[LatencySample]:
        rows = await self._db.fetch(
            "SELECT ts, provider, latency_ms, ttft_ms FROM ledger "
            "WHERE ts >= %s AND status < 400 AND error_code IS NULL "
            "ORDER BY ts DESC, id DESC LIMIT %s",
            (since_ts, max(0, limit)),
        )
        return [LatencySample(*row) for row in rows]

    async def errors(self, since_ts: float, limit: int) -> list[ErrorCount]:
        rows = await self._db.fetch(
            "SELECT status, error_code, provider, COUNT(*) FROM ledger "  # noqa: S608
            f"WHERE ts >= %s AND {_FAILED} GROUP BY status, error_code, provider "
            'ORDER BY COUNT(*) DESC, status, error_code COLLATE "C" NULLS FIRST, '
            'provider COLLATE "C" NULLS FIRST LIMIT %s',
            (since_ts, list(NOT_ERRORS), max(0, limit)),
        )
        return [ErrorCount(*row) for row in rows]

    async def prune(self, before_ts: float) -> int:
        """Rows older than `before_ts` deleted, in batches, for PRUNE_BUDGET_S at most (the
        daily aggregates stay): the number deleted."""
        deleted = 0
        deadline = time.monotonic() + PRUNE_BUDGET_S
        while True:
            count = await self._db.execute(
                "DELETE FROM ledger WHERE id IN (SELECT id FROM ledger WHERE ts < %s LIMIT %s)",
                (before_ts, PRUNE_BATCH),
            )
            deleted += count
            if count < PRUNE_BATCH or time.monotonic() >= deadline:
                return deleted

    async def aclose(self) -> None:
        await self._db.aclose()


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
