"""What only the Postgres backend has to prove, on the real server: its migrations run once when
several replicas start together (and find nothing to do afterwards), a connection the server
dropped costs at most one call, every failure is a quick StateUnavailable that names no URL or
password, and concurrent writers neither lose updates nor deadlock. Each test works in its own
random schema, dropped at the end.

The server is RELAYGATE_TEST_POSTGRES_URL (default: the local `test` database). With CI=true
these tests always run (an unreachable server fails them); elsewhere they skip without one."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg import sql

from relaygate.keys.policy import apply
from relaygate.state import postgres_db, postgres_ledger
from relaygate.state.postgres import PostgresBackend, open_postgres
from relaygate.state.records import KeyEvent, LedgerRecord, Rules, StateUnavailable

URL = os.environ.get("RELAYGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
T = TypeVar("T")


def _server_error() -> str | None:
    try:
        with psycopg.connect(URL, connect_timeout=2):
            return None
    except psycopg.Error as exc:
        return type(exc).__name__


@pytest.fixture(scope="module")
def server() -> str:
    error = _server_error()
    if error is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and the Postgres server is unreachable ({error})")
        pytest.skip(f"no Postgres server ({error})")
    return URL


def admin(query: sql.Composable | str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """One statement on a connection of the test's own (autocommit)."""
    with psycopg.connect(URL, autocommit=True) as conn:
        cur = conn.execute(query, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


@pytest.fixture
def schemas(server: str) -> Iterator[Callable[..., str]]:
    """Factory of random schema names (created unless `create=False`), all dropped after."""
    made: list[str] = []

    def new(*, create: bool = True, stem: str = "rg_test_") -> str:
        name = stem + uuid.uuid4().hex[:10]
        made.append(name)
        if create:
            admin(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        return name

    yield new
    for name in made:
        admin(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
async def backends() -> AsyncIterator[Callable[..., PostgresBackend]]:
    """Factory of backends, each closed after the test."""
    made: list[PostgresBackend] = []

    def new(schema: str, url: str = URL) -> PostgresBackend:
        made.append(open_postgres(url, apply, schema=schema))
        return made[-1]

    yield new
    for backend in made:
        await asyncio.wait_for(backend.aclose(), 5)


async def bounded(call: Awaitable[T], seconds: float = 10.0) -> T:
    """Nothing may hang: every call of the backend is awaited with a bound."""
    return await asyncio.wait_for(call, seconds)


def row(i: int, ts: float, **extra: Any) -> LedgerRecord:
    fields: dict[str, Any] = dict(
        id=f"r{i}",
        ts=ts,
        client="alpha",
        route="/v1/chat/completions",
        provider="openai",
        model="gpt-4o",
        key_id="k1",
        status=200,
        error_code=None,
        latency_ms=100,
        ttft_ms=None,
        prompt_tokens=10,
        completion_tokens=5,
        cost_usd=0.01,
        client_id="c1",
    )
    fields.update(extra)
    return LedgerRecord(**fields)


def test_the_column_lists_follow_the_records() -> None:
    from relaygate.state import postgres
    from relaygate.state.records import ClientRecord, KeyRecord

    assert tuple(f.name for f in dataclasses.fields(KeyRecord)) == postgres._KEY_COLUMNS
    columns = tuple(c.strip() for c in postgres._CLIENTS.split(","))
    assert columns == tuple(f.name for f in dataclasses.fields(ClientRecord))


def test_open_postgres_connects_on_first_use_only() -> None:
    started = time.monotonic()
    backend = open_postgres("postgresql://u:pw@127.0.0.1:1/none", apply)  # no loop, no server
    assert time.monotonic() - started < 0.5
    assert {"keys", "clients", "ledger", "claims"} <= set(dir(backend))
    with pytest.raises(ValueError):
        open_postgres(URL, apply, schema="")
    with pytest.raises(ValueError):
        open_postgres(URL, apply, schema="x" * 64)


async def test_migrations_apply_once_when_replicas_start_together(
    schemas: Callable[..., str],
    backends: Callable[..., PostgresBackend],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = postgres_db.migrations()
    # a last migration that fails if it runs twice, and counts its runs
    extra = (
        real[-1][0] + 1,
        "CREATE TABLE migration_runs (n int); INSERT INTO migration_runs VALUES (1);",
    )
    monkeypatch.setattr(postgres_db, "migrations", lambda: [*real, extra])
    schema = schemas(create=False)  # the backend creates it
    replicas = [backends(schema) for _ in range(4)]
    loaded = await bounded(asyncio.gather(*(r.keys.load() for r in replicas)))
    assert loaded == [[], [], [], []]
    table = sql.Identifier(schema, "schema_migrations")
    versions = admin(sql.SQL("SELECT version, applied_at FROM {} ORDER BY version").format(table))
    assert [v for v, _ in versions] == [n for n, _ in [*real, extra]]
    runs = sql.Identifier(schema, "migration_runs")
    assert admin(sql.SQL("SELECT count(*) FROM {}").format(runs)) == [(1,)]

    later = backends(schema)  # a replica started afterwards finds nothing to do
    assert await bounded(later.claims.claim("report", 60)) is True
    assert admin(sql.SQL("SELECT version, applied_at FROM {} ORDER BY version").format(table)) == (
        versions
    )
    assert admin(sql.SQL("SELECT count(*) FROM {}").format(runs)) == [(1,)]


async def test_a_schema_of_any_name_is_created_and_kept_apart(
    schemas: Callable[..., str], backends: Callable[..., PostgresBackend]
) -> None:
    odd = schemas(create=False, stem='Rg "odd" name ')
    plain = schemas()
    one, two = backends(odd), backends(plain)
    await bounded(one.keys.pause("openai", 100.0))
    assert await bounded(one.keys.pauses()) == {"openai": 100.0}
    assert await bounded(two.keys.pauses()) == {}
    assert admin("SELECT 1 FROM pg_namespace WHERE nspname = %s", (odd,)) == [(1,)]


async def test_a_killed_connection_costs_at_most_one_call(
    schemas: Callable[..., str], backends: Callable[..., PostgresBackend]
) -> None:
    app = "rg-kill-" + uuid.uuid4().hex[:8]
    backend = backends(schemas(), f"{URL}?application_name={app}")
    await bounded(backend.keys.pause("openai", 1.0))
    # several pooled connections, then all of them killed, a few times over
    await bounded(asyncio.gather(*(backend.keys.load() for _ in range(6))))
    for round_ in range(3):
        killed = admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (app,),
        )
        assert killed and all(ok for (ok,) in killed)
        started = time.monotonic()
        try:  # this call may fail (it does not: a dead pooled connection is replaced first)
            assert await bounded(backend.keys.pauses()) == {"openai": 1.0}
        except StateUnavailable as exc:
            assert str(exc).startswith("postgres: ")
        assert time.monotonic() - started < 1.0
        assert await bounded(backend.keys.pauses()) == {"openai": 1.0}, round_


async def test_a_connection_killed_mid_call_fails_that_call_only(
    schemas: Callable[..., str], backends: Callable[..., PostgresBackend]
) -> None:
    schema = schemas()
    app = "rg-kill-" + uuid.uuid4().hex[:8]
    backend = backends(schema, f"{URL}?application_name={app}")
    used = KeyEvent("k1", "openai", "used")
    await bounded(backend.keys.apply([used], Rules()))
    with psycopg.connect(URL) as holder:  # holds the key's row: the next apply waits for it
        holder.execute(
            sql.SQL("SELECT 1 FROM {} WHERE key_id = 'k1' FOR UPDATE").format(
                sql.Identifier(schema, "upstream_keys")
            )
        )
        waiting = asyncio.create_task(bounded(backend.keys.apply([used], Rules())))
        killed: list[tuple[Any, ...]] = []
        for _ in range(50):
            await asyncio.sleep(0.05)
            killed = admin(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s AND wait_event_type = 'Lock'",
                (app,),
            )
            if killed:
                break
        assert killed == [(True,)]
        started = time.monotonic()
        with pytest.raises(StateUnavailable, match=r"^postgres: "):
            await waiting
        assert time.monotonic() - started < 1.0
        holder.rollback()
    (record,) = await bounded(backend.keys.apply([used], Rules()))
    assert record.requests_total == 2  # the killed call changed nothing


async def test_an_unreachable_server_is_a_quick_error_naming_no_secret(
    backends: Callable[..., PostgresBackend],
) -> None:
    backend = backends("public", "postgresql://relay:s3cret-pw@127.0.0.1:1/nowhere")
    for _ in range(2):
        started = time.monotonic()
        with pytest.raises(StateUnavailable) as caught:
            await bounded(backend.ledger.month_spend("2026-12"))
        assert time.monotonic() - started < 4.0
        message = str(caught.value)
        assert message.startswith("postgres: ")
        assert "s3cret" not in message and "127.0.0.1" not in message and "relay" not in message
        assert caught.value.__cause__ is None and caught.value.__suppress_context__


async def test_a_statement_past_its_timeout_is_state_unavailable(
    schemas: Callable[..., str], backends: Callable[..., PostgresBackend]
) -> None:
    schema = schemas()
    backend = backends(schema)
    used = KeyEvent("k1", "openai", "used")
    await bounded(backend.keys.apply([used], Rules()))
    # another session holds the key's row: the backend's statement gives up after 5 s
    with psycopg.connect(URL) as holder:
        holder.execute(
            sql.SQL("SELECT 1 FROM {} WHERE key_id = 'k1' FOR UPDATE").format(
                sql.Identifier(schema, "upstream_keys")
            )
        )
        started = time.monotonic()
        with pytest.raises(StateUnavailable, match=r"^postgres: QueryCanceled$"):
            await bounded(backend.keys.apply([used], Rules()))
        assert time.monotonic() - started < 7.0
        holder.rollback()
    (record,) = await bounded(backend.keys.apply([used], Rules()))
    assert record.requests_total == 2  # the cancelled call changed nothing


async def test_concurrent_key_events_lose_no_update_and_never_deadlock(
    schemas: Callable[..., str], backends: Callable[..., PostgresBackend]
) -> None:
    schema = schemas()
    one, two = backends(schema), backends(schema)

    def events(order: str) -> list[KeyEvent]:
        return [KeyEvent(f"key-{c}", "openai", "used") for c in order]

    calls = [
        b.keys.apply(events("abc" if i % 2 else "cba"), Rules())
        for i in range(20)
        for b in (one, two)
    ]
    await bounded(asyncio.gather(*calls), 30)
    records = await bounded(one.keys.load())
    assert [(r.key_id, r.requests_total) for r in records] == [
        ("key-a", 40),
        ("key-b", 40),
        ("key-c", 40),
    ]


async def test_concurrent_claims_have_one_winner(
    schemas: Callable[..., str], backends: Callable[..., PostgresBackend]
) -> None:
    schema = schemas()
    replicas = [backends(schema) for _ in range(3)]
    won = await bounded(asyncio.gather(*(r.claims.claim("daily", 60) for r in replicas * 4)))
    assert sorted(won) == [False] * 11 + [True]
    assert await bounded(replicas[0].claims.claimed("daily")) is True
    assert await bounded(replicas[0].claims.claimed("other")) is False


async def test_a_batch_written_by_two_replicas_at_once_counts_once(
    schemas: Callable[..., str], backends: Callable[..., PostgresBackend]
) -> None:
    schema = schemas()
    one, two = backends(schema), backends(schema)
    now = time.time()
    batch = [row(i, now - i, status=500 if i % 5 == 0 else 200) for i in range(50)]
    await bounded(asyncio.gather(one.ledger.write(batch), two.ledger.write(batch[::-1])))
    await bounded(one.ledger.write(batch[:10]))  # a retried batch
    day = batch[0].day
    (usage,) = await bounded(one.ledger.usage("client", day))
    assert (usage.client_id, usage.requests, usage.errors) == ("c1", 50, 10)
    assert usage.prompt_tokens == 500 and usage.cost_usd == pytest.approx(0.5)


async def test_a_client_is_named_by_its_latest_row(
    schemas: Callable[..., str], backends: Callable[..., PostgresBackend]
) -> None:
    backend = backends(schemas())
    now = time.time()
    day = row(0, now).day
    # renamed from "zed" to "amy", the rows arriving out of order, over two batches and models
    await bounded(backend.ledger.write([row(1, now, client="amy"), row(2, now - 5, client="zed")]))
    await bounded(backend.ledger.write([row(3, now - 9, client="zed", model="o3")]))
    (usage,) = await bounded(backend.ledger.usage("client", day))
    assert (usage.name, usage.client_id, usage.requests) == ("amy", "c1", 3)
    (spend,) = await bounded(backend.ledger.spend("client", day, 5))
    assert (spend.name, spend.requests) == ("amy", 3)


async def test_prune_deletes_in_batches(
    schemas: Callable[..., str],
    backends: Callable[..., PostgresBackend],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(postgres_ledger, "PRUNE_BATCH", 7)
    backend = backends(schemas())
    now = time.time()
    await bounded(backend.ledger.write([row(i, now - 1000 - i) for i in range(30)]))
    await bounded(backend.ledger.write([row(100 + i, now - i) for i in range(5)]))
    assert await bounded(backend.ledger.prune(now - 500)) == 30
    assert await bounded(backend.ledger.prune(now - 500)) == 0
    assert len(await bounded(backend.ledger.latencies(0, 100))) == 5
    (usage,) = await bounded(backend.ledger.usage("day", batch_day := row(0, now).day))
    assert usage.requests == 35 and usage.name == batch_day  # the aggregates stay


async def test_close_is_idempotent_and_later_calls_are_state_unavailable(
    schemas: Callable[..., str], backends: Callable[..., PostgresBackend]
) -> None:
    backend = backends(schemas())
    await bounded(backend.keys.load())
    await bounded(backend.clients.aclose())
    await bounded(backend.ledger.aclose())
    await bounded(backend.aclose())
    with pytest.raises(StateUnavailable, match=r"^postgres: PoolClosed$"):
        await bounded(backend.keys.load())


async def test_client_models_and_duplicates(
    schemas: Callable[..., str], backends: Callable[..., PostgresBackend]
) -> None:
    from relaygate.state.records import ClientChanges, ClientRecord

    backend = backends(schemas())
    first = ClientRecord("c1", "alpha", "hash-1", "rg-…abcd", 1.0, models=("gpt-4o", "o3"))
    await bounded(backend.clients.insert(first))
    assert await bounded(backend.clients.get("c1")) == first
    for clash in (
        ClientRecord("c1", "other", "hash-2", "x", 2.0),
        ClientRecord("c2", "other", "hash-1", "x", 2.0),
    ):
        with pytest.raises(ValueError):
            await bounded(backend.clients.insert(clash))
    changed = await bounded(
        backend.clients.update("c1", ClientChanges(frozenset({"models", "rpm"}), rpm=3))
    )
    assert changed is not None and changed.models is None and changed.rpm == 3
    assert changed.name == "alpha"
