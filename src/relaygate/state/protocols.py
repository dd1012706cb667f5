"""The state seam: small async Protocols every backend implements (memory, SQLite, Postgres,
Redis). Callers hold these, never a backend class. Every method may raise StateUnavailable and
must return or raise within its backend's own short timeout: none of them ever hangs.

Rows that count as errors in every aggregate: status >= 400 or an error code, unless the code is
one of NOT_ERRORS (the client went away)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from relaygate.state.records import (
    Admission,
    AdmitRequest,
    ClientChanges,
    ClientRecord,
    DayRow,
    ErrorCount,
    FailureRow,
    KeyEvent,
    KeyRecord,
    LatencySample,
    LedgerRecord,
    MinuteRow,
    Rules,
    SpendGroup,
    SpendRow,
    UsageGroup,
    UsageRow,
)

NOT_ERRORS = ("client_closed", "client_disconnected")  # (the second: the code's name before 0.2)


class Admissions(Protocol):
    """Client rate windows (60 s sliding: requests, and tokens in one-second buckets) and monthly
    budgets (calendar month, UTC), decided together: one call, atomic across every process that
    shares the backend. A refused request takes nothing. Settlement is off the request path."""

    async def admit(self, request: AdmitRequest) -> Admission: ...

    def settle(self, admission: Admission, tokens: int, cost_usd: float) -> None:
        """Replace the estimate by the real tokens and the reservation by the real cost. Once
        per admission (a second call does nothing). A reservation of an earlier month leaves
        this month's account alone. May be queued: `flush` waits for it."""

    def release(self, admission: Admission) -> None:
        """Take the admission back whole (its request slot, tokens and reservation)."""

    async def spent(self, client_id: str, month: str) -> float:
        """Settled spend of a client in a month ('2026-12')."""

    async def seed_spend(self, month: str, spend: Mapping[str, float]) -> None:
        """Settled spend per client id from the ledger, taken where the backend has no account
        for that client and month yet (a restart, an emptied Redis)."""

    async def flush(self) -> None: ...

    async def aclose(self) -> None: ...


class KeyStates(Protocol):
    """Upstream key states and usage. `apply` runs the transition rules on each event,
    atomically per key (the Redis backend with a script that mirrors keys/policy.py); `save`
    stores whole snapshots (last writer wins) for backends that only persist."""

    async def load(self) -> list[KeyRecord]: ...

    async def save(self, records: Sequence[KeyRecord]) -> None: ...

    async def apply(self, events: Sequence[KeyEvent], rules: Rules) -> list[KeyRecord]:
        """The records of the keys the events touched, after them, in the order first touched.
        A key not stored yet starts as a fresh ready record. Time is the backend's clock."""

    async def pause(self, provider: str, until: float) -> None:
        """The provider as a whole is throttled until `until` (later pauses extend it)."""

    async def pauses(self) -> dict[str, float]: ...

    async def aclose(self) -> None: ...


class Clients(Protocol):
    async def insert(self, client: ClientRecord) -> None:
        """Raises ValueError when the id or the key hash exists already."""

    async def get(self, client_id: str) -> ClientRecord | None: ...

    async def update(self, client_id: str, changes: ClientChanges) -> ClientRecord | None:
        """None when there is no such live (unrevoked) client."""

    async def revoke(self, client_id: str) -> bool: ...

    async def list(self, *, include_revoked: bool = True) -> list[ClientRecord]:
        """Ordered by creation time."""

    async def aclose(self) -> None: ...


class LedgerStore(Protocol):
    """The ledger and its daily aggregates (per day, client id, provider, model, key id)."""

    async def write(self, rows: Sequence[LedgerRecord]) -> None:
        """All or nothing; a row id written before is ignored (a retried batch)."""

    async def usage(self, by: UsageGroup, period: str) -> list[UsageRow]:
        """From the daily aggregates; `period` is a day '2026-12-05' or a month '2026-12'.
        Ordered by cost (desc), then name. By client: one row per client id."""

    async def month_spend(self, month: str) -> dict[str, float]: ...

    async def failures(self, limit: int) -> list[FailureRow]:
        """The latest failed rows, newest first."""

    async def minutes(self, since_ts: float) -> list[MinuteRow]:
        """Per minute with rows since `since_ts` (minutes without rows are absent)."""

    async def days(self, first: str, last: str) -> list[DayRow]: ...

    async def spend(self, group: SpendGroup, since_day: str, limit: int) -> list[SpendRow]:
        """From the daily aggregates: by model ('provider/model'), provider or client id (named
        by its latest name), ordered by cost desc, requests desc, name."""

    async def latencies(self, since_ts: float, limit: int) -> list[LatencySample]:
        """Successful rows since `since_ts`, newest first."""

    async def errors(self, since_ts: float, limit: int) -> list[ErrorCount]:
        """Failed rows since `since_ts` by status, code and provider, most first."""

    async def prune(self, before_ts: float) -> int: ...

    async def aclose(self) -> None: ...


class ResponseCache(Protocol):
    # True: answers from this process's memory, never waits on I/O (no timeout needed around it)
    local: bool

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes, ttl_s: float) -> None: ...

    async def aclose(self) -> None: ...


class Claims(Protocol):
    """Once-only work across replicas (the daily report): the first caller of a name wins."""

    async def claim(self, name: str, ttl_s: float) -> bool: ...

    async def claimed(self, name: str) -> bool: ...

    async def aclose(self) -> None: ...
