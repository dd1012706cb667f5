"""The state seam's contract suite runs every test on each backend that implements the Protocol
under test: admissions on memory and Redis; key states on memory, SQLite, Postgres and Redis;
clients and the ledger on memory, SQLite and Postgres; the cache on memory and Redis; claims on
memory, SQLite, Postgres and Redis.

Each test gets its own backend: SQLite in a file under tmp_path, Postgres in a fresh random
schema (dropped afterwards), Redis under a random key prefix (its keys deleted afterwards). The
servers are RELAYGATE_TEST_POSTGRES_URL and RELAYGATE_TEST_REDIS_URL (default: the machine's
own). An unreachable server skips its tests, except with CI=true, where they fail. Every call a
test makes goes through `Bounded`, so a backend that hangs fails its test within seconds.

Memory backends run on a clock the tests move (`advance`); the others on real time (SQLite and
Postgres on this process's clock, Redis on the server's), where `advance` sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import inspect
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import psycopg
import pytest
import redis
import redis.asyncio as aioredis
from psycopg import sql

from relaygate.keys.policy import apply
from relaygate.state.memory import MemoryCache, MemoryClaims, MemoryClients, MemoryKeyStates
from relaygate.state.memory_admissions import MemoryAdmissions
from relaygate.state.memory_ledger import MemoryLedger
from relaygate.state.records import Admission, AdmitRequest

PG_URL = os.environ.get("RELAYGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("RELAYGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CALL_S = 5.0  # one call to a backend, at most
REDIS_TIMEOUT_S = 2.0  # the Redis backend's own per-call bound (past it, its fallback answers)


def backend_module(name: str) -> ModuleType:
    """`relaygate.state.<name>`: every backend is written, so a missing one fails the suite."""
    return importlib.import_module(f"relaygate.state.{name}")


@functools.cache
def _unreachable(service: str) -> str | None:
    """Why `service` cannot be reached, or None; asked once per session."""
    try:
        if service == "postgres":
            with psycopg.connect(PG_URL, connect_timeout=2):
                return None
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
        return None
    except (psycopg.Error, redis.RedisError, OSError) as exc:
        return type(exc).__name__


def require(service: str) -> None:
    why = _unreachable(service)
    if why is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {service} is unreachable ({why}): it must run in CI")
    pytest.skip(f"{service} is unreachable ({why})")


class Clock:
    """A clock the memory backends read; starts at the real time."""

    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


class Bounded:
    """A backend object whose every coroutine method is bounded by CALL_S (sync methods, like
    settle and release, pass through), plus what the tests need to know about it: `kind`, and
    `advance(seconds)`, which moves the memory clock or sleeps."""

    def __init__(self, inner: Any, kind: str, clock: Clock | None) -> None:
        self.inner = inner
        self.kind = kind
        self.clock = clock

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.wait_for(attr(*args, **kwargs), CALL_S)

        return call

    async def advance(self, seconds: float) -> None:
        if self.clock is not None:
            self.clock.t += seconds
        else:
            await asyncio.sleep(seconds)


class Tripwire(MemoryAdmissions):
    """The Redis backend's fallback in these tests: an admission it answers means Redis was not
    used, and the test fails (it would otherwise pass on the fallback's numbers)."""

    answered = 0

    async def admit(self, request: AdmitRequest) -> Admission:
        self.answered += 1
        return await super().admit(request)


async def _close(parts: Any) -> None:
    seen: set[int] = set()
    for name in ("admissions", "keys", "clients", "ledger", "cache", "claims", ""):
        part = getattr(parts, name, None) if name else parts
        if part is None or id(part) in seen or not hasattr(part, "aclose"):
            continue
        seen.add(id(part))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(part.aclose(), CALL_S)


def _drop_schema(schema: str) -> None:
    with psycopg.connect(PG_URL, autocommit=True, connect_timeout=2) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


async def _delete_prefix(prefix: str) -> None:
    client = aioredis.Redis.from_url(REDIS_URL, socket_timeout=CALL_S)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def open_redis_backend(prefix: str, fallback: Tripwire) -> Any:
    module = backend_module("redis_db")
    require("redis")
    return module.open_redis(REDIS_URL, prefix=prefix, timeout_s=REDIS_TIMEOUT_S, fallback=fallback)


@asynccontextmanager
async def opened(kind: str, tmp_path: Path, clock: Clock) -> AsyncIterator[Any]:
    """The backend object of `kind` (its parts as attributes), closed and emptied afterwards."""
    if kind == "memory":
        parts = SimpleNamespace(
            admissions=MemoryAdmissions(clock),
            keys=MemoryKeyStates(apply, clock),
            clients=MemoryClients(),
            ledger=MemoryLedger(),
            cache=MemoryCache(1000, 1 << 20, clock),
            claims=MemoryClaims(clock),
        )
        yield parts
    elif kind == "sqlite":
        parts = backend_module("sqlite").open_sqlite(f"sqlite:///{tmp_path / 'state.db'}", apply)
        try:
            yield parts
        finally:
            await _close(parts)
    elif kind == "postgres":
        module = backend_module("postgres")
        require("postgres")
        schema = f"rg_contract_{uuid.uuid4().hex[:12]}"
        parts = module.open_postgres(PG_URL, apply, schema=schema)
        try:
            yield parts
        finally:
            await _close(parts)
            await asyncio.to_thread(_drop_schema, schema)
    elif kind == "redis":
        prefix = f"rgtest:{uuid.uuid4().hex[:12]}:"
        fallback = Tripwire()
        parts = open_redis_backend(prefix, fallback)
        try:
            yield parts
        finally:
            await _close(parts)
            await _delete_prefix(prefix)
        assert fallback.answered == 0, "the Redis backend answered from its fallback"
    else:
        raise AssertionError(kind)


def _part_fixture(part: str, kinds: tuple[str, ...]) -> Callable[..., AsyncIterator[Bounded]]:
    @pytest.fixture(params=kinds, name=part)
    async def fixture(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Bounded]:
        kind = request.param
        clock = Clock()
        async with opened(kind, tmp_path, clock) as parts:
            yield Bounded(getattr(parts, part), kind, clock if kind == "memory" else None)

    return fixture


admissions = _part_fixture("admissions", ("memory", "redis"))
keys = _part_fixture("keys", ("memory", "sqlite", "postgres", "redis"))
clients = _part_fixture("clients", ("memory", "sqlite", "postgres"))
ledger = _part_fixture("ledger", ("memory", "sqlite", "postgres"))
cache = _part_fixture("cache", ("memory", "redis"))
claims = _part_fixture("claims", ("memory", "sqlite", "postgres", "redis"))


@pytest.fixture(params=("memory", "redis"))
async def admissions_pair(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Bounded, Bounded]]:
    """Two admission objects over one backend, as two gateways sharing it have: the same
    MemoryAdmissions (two States of one process), or two Redis backends on one prefix."""
    kind = request.param
    if kind == "memory":
        shared = MemoryAdmissions()
        yield Bounded(shared, kind, None), Bounded(shared, kind, None)
        return
    prefix = f"rgtest:{uuid.uuid4().hex[:12]}:"
    fallbacks = (Tripwire(), Tripwire())
    first = open_redis_backend(prefix, fallbacks[0])
    second = open_redis_backend(prefix, fallbacks[1])
    try:
        yield Bounded(first.admissions, kind, None), Bounded(second.admissions, kind, None)
    finally:
        await _close(first)
        await _close(second)
        await _delete_prefix(prefix)
    assert fallbacks[0].answered == fallbacks[1].answered == 0, "Redis fallback answered"


async def bounded(awaitable: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(awaitable, CALL_S)


def req(
    client: str = "c1",
    *,
    rpm: int | None = None,
    tpm: int | None = None,
    tokens: int = 0,
    budget: float | None = None,
    cost: float = 0.0,
) -> AdmitRequest:
    """An admission request with only the fields a test names."""
    return AdmitRequest(client, rpm, tpm, tokens, budget, cost)
