"""All state behind one seam (shared/design.md, "Three seams"): the Protocols of
`state.protocols`, the records of `state.records`, and `open_state`, which picks the backends
from two URLs. Memory is the default for the hot state (rate windows, budgets, live key states,
the cache), SQLite for durable data; `REDIS_URL` moves the hot state to Redis (shared by every
replica); a `postgresql://` DATABASE_URL moves the durable data to Postgres. Backends are
imported only when chosen, so a gateway without Redis never loads its client."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from relaygate.state.protocols import (
    Admissions,
    Claims,
    Clients,
    KeyStates,
    LedgerStore,
    ResponseCache,
)
from relaygate.state.records import KeyEvent, KeyRecord, Rules, StateUnavailable

Transition = Callable[[KeyRecord, KeyEvent, float, Rules], KeyRecord]

__all__ = ["State", "StateSettings", "StateUnavailable", "Transition", "open_state"]


@dataclass(frozen=True, slots=True)
class StateSettings:
    database_url: str = "sqlite:///relaygate-data/relaygate.db"  # or postgresql://, or memory://
    redis_url: str | None = None
    redis_prefix: str = "relaygate:"
    redis_timeout_s: float = 0.5  # every Redis call: past this, the local fallback answers
    postgres_schema: str = "public"
    cache_max_entries: int = 10_000
    cache_max_bytes: int = 64 * 1024 * 1024


@dataclass(slots=True)
class State:
    """One gateway's view of its state. `keys` persists key-state snapshots (durable); `shared`
    is the live key state every replica reads and writes (Redis), or None in one process."""

    admissions: Admissions
    keys: KeyStates
    clients: Clients
    ledger: LedgerStore
    cache: ResponseCache
    claims: Claims
    shared: KeyStates | None = None
    kind: str = "memory"  # what `/health` and the logs say about where state lives
    _closers: list[Callable[[], object]] = field(default_factory=list)

    async def aclose(self) -> None:
        parts: list[object] = [self.admissions, self.shared, self.cache, self.claims]
        parts += [self.keys, self.clients, self.ledger]
        seen: set[int] = set()
        for part in parts:
            if part is None or id(part) in seen:
                continue
            seen.add(id(part))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(part.aclose(), 5)  # type: ignore[attr-defined]


def open_state(
    settings: StateSettings, transition: Transition, clock: Callable[[], float] = time.time
) -> State:
    """The backends the settings name. Connections to Postgres and Redis open on first use, so
    this never blocks; a wrong URL scheme raises ValueError naming the setting."""
    from relaygate.state.memory import MemoryCache, MemoryClaims, MemoryKeyStates
    from relaygate.state.memory_admissions import MemoryAdmissions

    url = settings.database_url
    durable_keys: KeyStates
    clients: Clients
    ledger: LedgerStore
    claims: Claims
    if url.startswith(("postgresql://", "postgres://")):
        from relaygate.state.postgres import open_postgres

        pg = open_postgres(url, transition, schema=settings.postgres_schema)
        durable_keys, clients, ledger, claims = pg.keys, pg.clients, pg.ledger, pg.claims
        kind = "postgres"
    elif url.startswith("sqlite:///"):
        from relaygate.state.sqlite import open_sqlite

        lite = open_sqlite(url, transition)
        durable_keys, clients, ledger, claims = lite.keys, lite.clients, lite.ledger, lite.claims
        kind = "sqlite"
    elif url.startswith("memory://"):
        from relaygate.state.memory import MemoryClients
        from relaygate.state.memory_ledger import MemoryLedger

        durable_keys, clients, ledger = (
            MemoryKeyStates(transition, clock),
            MemoryClients(),
            MemoryLedger(),
        )
        claims, kind = MemoryClaims(clock), "memory"
    else:
        raise ValueError("DATABASE_URL must start with sqlite:///, postgresql:// or memory://")
    admissions: Admissions = MemoryAdmissions(clock)
    cache: ResponseCache = MemoryCache(settings.cache_max_entries, settings.cache_max_bytes, clock)
    shared: KeyStates | None = None
    if settings.redis_url:
        from relaygate.state.redis_db import open_redis

        red = open_redis(
            settings.redis_url,
            prefix=settings.redis_prefix,
            timeout_s=settings.redis_timeout_s,
            fallback=admissions,
        )
        admissions, shared, cache, claims = red.admissions, red.keys, red.cache, red.claims
        kind += "+redis"
    return State(
        admissions=admissions,
        keys=durable_keys,
        clients=clients,
        ledger=ledger,
        cache=cache,
        claims=claims,
        shared=shared,
        kind=kind,
    )
