"""The ledger in memory (DATABASE_URL memory://, and tests): the latest rows, at most `max_rows`
(the oldest dropped first), kept in time order, and the daily aggregates per (day, client id,
provider, model, key id) as the SQL backends keep them (a missing value is ''). Every read gives
what the SQLite and Postgres backends give for the same writes: a row is an error when its
status is >= 400 or it has an error code, unless the code is one of NOT_ERRORS."""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Iterator, Sequence
from operator import attrgetter

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

_ORDER: Callable[[LedgerRecord], tuple[float, str]] = attrgetter(
    "ts", "id"
)  # the rows' order: newest last, equal times by id
_FIELD = {"client": 1, "provider": 2, "model": 3, "key": 4}  # in an aggregate's key


def is_error(row: LedgerRecord) -> bool:
    code = row.error_code
    return (row.status >= 400 or code is not None) and code not in NOT_ERRORS


class _Daily:
    """One aggregate; `name` is the client's name in its latest row, written at `last_ts`."""

    __slots__ = (
        "cached_tokens",
        "completion_tokens",
        "cost_usd",
        "errors",
        "last_ts",
        "latency_ms_sum",
        "name",
        "prompt_tokens",
        "requests",
    )

    def __init__(self) -> None:
        self.name = ""
        self.last_ts = float("-inf")
        self.requests = self.errors = self.latency_ms_sum = 0
        self.prompt_tokens = self.completion_tokens = self.cached_tokens = 0
        self.cost_usd = 0.0

    def add(self, row: LedgerRecord) -> None:
        if row.ts >= self.last_ts:
            self.name, self.last_ts = row.client or "", row.ts
        self.requests += 1
        self.errors += is_error(row)
        self.prompt_tokens += row.prompt_tokens
        self.completion_tokens += row.completion_tokens
        self.cached_tokens += row.cached_tokens
        self.cost_usd += row.cost_usd
        self.latency_ms_sum += row.latency_ms


_Key = tuple[str, str, str, str, str]  # day, client id, provider, model, key id


class MemoryLedger:
    def __init__(self, max_rows: int = 100_000) -> None:
        self.max_rows = max_rows
        self._rows: list[LedgerRecord] = []  # by (ts, id)
        self._ids: set[str] = set()
        self._daily: dict[_Key, _Daily] = {}

    def __len__(self) -> int:
        return len(self._rows)

    async def write(self, rows: Sequence[LedgerRecord]) -> None:
        rows_by_ts, ids = self._rows, self._ids
        for row in rows:
            if row.id in ids:
                continue  # written before (a retried batch)
            ids.add(row.id)
            if not rows_by_ts or _ORDER(rows_by_ts[-1]) <= (row.ts, row.id):
                rows_by_ts.append(row)
            else:
                bisect.insort_right(rows_by_ts, row, key=_ORDER)
            key = (
                row.day, row.client_id or "", row.provider or "", row.model or "", row.key_id or ""
            )  # fmt: skip
            daily = self._daily.get(key)
            if daily is None:
                daily = self._daily[key] = _Daily()
            daily.add(row)
        excess = len(rows_by_ts) - self.max_rows
        if excess > 0:
            for row in rows_by_ts[:excess]:
                ids.discard(row.id)
            del rows_by_ts[:excess]

    def _days(self, first: str, last: str | None = None) -> Iterator[tuple[_Key, _Daily]]:
        for key, daily in self._daily.items():
            if key[0] >= first and (last is None or key[0] <= last):
                yield key, daily

    async def usage(self, by: UsageGroup, period: str) -> list[UsageRow]:
        # a day '2026-12-05' or a month '2026-12' (every day of it: '2026-12-01'..'2026-12-31')
        last = period if len(period) > 7 else period + "-99"
        groups: dict[str, list[_Daily]] = {}
        for key, daily in self._days(period, last):
            groups.setdefault(key[0] if by == "day" else key[_FIELD[by]], []).append(daily)
        out = []
        for group, parts in groups.items():
            name = _latest_name(parts) if by == "client" else group
            out.append(
                UsageRow(
                    name=name,
                    requests=sum(p.requests for p in parts),
                    errors=sum(p.errors for p in parts),
                    prompt_tokens=sum(p.prompt_tokens for p in parts),
                    completion_tokens=sum(p.completion_tokens for p in parts),
                    cached_tokens=sum(p.cached_tokens for p in parts),
                    cost_usd=sum(p.cost_usd for p in parts),
                    latency_ms_sum=sum(p.latency_ms_sum for p in parts),
                    client_id=group if by == "client" else None,
                )
            )
        out.sort(key=lambda r: (-r.cost_usd, r.name or ""))
        return out

    async def month_spend(self, month: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for key, daily in self._days(month, month + "-99"):
            out[key[1]] = out.get(key[1], 0.0) + daily.cost_usd
        return out

    async def failures(self, limit: int) -> list[FailureRow]:
        out: list[FailureRow] = []
        for r in reversed(self._rows):
            if len(out) >= limit:
                break
            if is_error(r):
                out.append(_failure(r))
        return out

    def _since(self, since_ts: float) -> list[LedgerRecord]:
        return self._rows[bisect.bisect_left(self._rows, (since_ts, ""), key=_ORDER) :]

    async def minutes(self, since_ts: float) -> list[MinuteRow]:
        found: dict[int, list[float]] = {}
        for r in self._since(since_ts):
            acc = found.get(int(r.ts // 60))
            if acc is None:
                acc = found[int(r.ts // 60)] = [0, 0, 0, 0.0]
            acc[0] += 1
            acc[1] += is_error(r)
            acc[2] += r.prompt_tokens + r.completion_tokens
            acc[3] += r.cost_usd
        return [
            MinuteRow(m, int(a[0]), int(a[1]), int(a[2]), a[3]) for m, a in sorted(found.items())
        ]

    async def days(self, first: str, last: str) -> list[DayRow]:
        found: dict[str, list[float]] = {}
        for key, d in self._days(first, last):
            acc = found.setdefault(key[0], [0, 0, 0, 0.0])
            acc[0] += d.requests
            acc[1] += d.errors
            acc[2] += d.prompt_tokens + d.completion_tokens
            acc[3] += d.cost_usd
        return [
            DayRow(day, int(a[0]), int(a[1]), int(a[2]), a[3]) for day, a in sorted(found.items())
        ]

    async def spend(self, group: SpendGroup, since_day: str, limit: int) -> list[SpendRow]:
        groups: dict[str, list[_Daily]] = {}
        for (_, client_id, provider, model, _), daily in self._days(since_day):
            if group == "model":
                name = model if provider == "" else f"{provider}/{model}"
            else:
                name = provider if group == "provider" else client_id
            groups.setdefault(name, []).append(daily)
        out = [
            SpendRow(
                name=_latest_name(parts) if group == "client" else name,
                requests=sum(p.requests for p in parts),
                errors=sum(p.errors for p in parts),
                tokens=sum(p.prompt_tokens + p.completion_tokens for p in parts),
                cost_usd=sum(p.cost_usd for p in parts),
            )
            for name, parts in groups.items()
        ]
        out.sort(key=lambda r: (-r.cost_usd, -r.requests, r.name or ""))
        return out[: max(0, limit)]

    async def latencies(self, since_ts: float, limit: int) -> list[LatencySample]:
        out: list[LatencySample] = []
        rows = self._rows
        first = bisect.bisect_left(rows, (since_ts, ""), key=_ORDER)
        for i in range(len(rows) - 1, first - 1, -1):
            if len(out) >= limit:
                break
            r = rows[i]
            if r.status < 400 and r.error_code is None:
                out.append(LatencySample(r.ts, r.provider, r.latency_ms, r.ttft_ms))
        return out

    async def errors(self, since_ts: float, limit: int) -> list[ErrorCount]:
        counts: dict[tuple[int, str | None, str | None], int] = {}
        for r in self._since(since_ts):
            if is_error(r):
                key = (r.status, r.error_code, r.provider)
                counts[key] = counts.get(key, 0) + 1
        top = heapq.nsmallest(
            max(0, limit),
            counts.items(),
            key=lambda item: (
                -item[1],
                item[0][0],
                _nulls_first(item[0][1]),
                _nulls_first(item[0][2]),
            ),
        )
        return [ErrorCount(status, code, provider, n) for (status, code, provider), n in top]

    async def prune(self, before_ts: float) -> int:
        cut = bisect.bisect_left(self._rows, (before_ts, ""), key=_ORDER)
        for row in self._rows[:cut]:
            self._ids.discard(row.id)
        del self._rows[:cut]
        return cut

    async def aclose(self) -> None:
        return None


def _failure(r: LedgerRecord) -> FailureRow:
    return FailureRow(
        r.id, r.ts, r.client, r.route, r.provider, r.model, r.key_id, r.status, r.error_code,
        r.latency_ms, r.attempts,
    )  # fmt: skip


def _nulls_first(text: str | None) -> tuple[bool, str]:
    return (text is not None, text or "")


def _latest_name(parts: list[_Daily]) -> str:
    """The name in the latest row of a client's aggregates."""
    return max(parts, key=lambda p: (p.last_ts, p.name)).name
