"""What only the Redis backend has to prove, on real servers: an admission is one round trip; a
reservation never settled gives its budget back by itself, and a settlement sent twice counts
once; settlements are queued and sent in one pipeline by the background task; the budget holds
to the nano-dollar under 100 concurrent admissions from two gateways with their settlements; a
dead or frozen Redis makes every call a quick StateUnavailable; the failover answers with this
replica's shares, warns once per outage and goes back to Redis when it returns; the heartbeat
counts replicas; and no error or log line carries the URL or its password.

The shared server is RELAYGATE_TEST_REDIS_URL (tests/state/conftest.py: skipped without it,
except with CI=true); the fault tests start private `redis-server`s on free ports (skipped
without the binary, except with CI=true)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from relaygate.state import redis_admissions
from relaygate.state.memory_admissions import MemoryAdmissions, utc_month
from relaygate.state.records import KeyEvent, KeyRecord, Rules, StateUnavailable
from relaygate.state.redis_db import RedisState, open_redis
from tests.state.conftest import REDIS_URL, _delete_prefix, req, require

CANARY = "s3cret-canary"


@pytest.fixture
async def states() -> AsyncIterator[Callable[..., RedisState]]:
    """Factory of backends on the shared server (one random prefix each unless given), closed
    and their keys deleted afterwards."""
    require("redis")
    made: list[tuple[RedisState, str]] = []

    def new(prefix: str | None = None, url: str = REDIS_URL, timeout_s: float = 2.0) -> RedisState:
        prefix = prefix or f"rgtest:{uuid.uuid4().hex[:12]}:"
        state = open_redis(url, prefix=prefix, timeout_s=timeout_s, fallback=MemoryAdmissions())
        made.append((state, prefix))
        return state

    yield new
    for state, prefix in made:
        await asyncio.wait_for(state.aclose(), 10)
        if prefix.startswith("rgtest:"):
            await _delete_prefix(prefix)


# --- private servers --------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A private redis-server on a port of its own: killed, frozen or started again at will."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                *("--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
                *("--appendonly", "no", "--loglevel", "warning"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def freeze(self, frozen: bool = True) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP if frozen else signal.SIGCONT)


@pytest.fixture
def server() -> Iterator[Server]:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true and redis-server is not installed")
        pytest.skip("redis-server is not installed")
    srv = Server()
    srv.start()
    try:
        yield srv
    finally:
        srv.kill()


def count_commands(client: aioredis.Redis) -> list[tuple[Any, ...]]:
    """Every command the client sends from now on outside pipelines (name and arguments)."""
    calls: list[tuple[Any, ...]] = []
    real = client.execute_command

    async def counting(*args: Any, **options: Any) -> Any:
        calls.append(args)
        return await real(*args, **options)

    client.execute_command = counting  # type: ignore[method-assign]
    return calls


def count_wire(state: RedisState, calls: list[tuple[Any, ...]]) -> None:
    """Also every command the request path's pipelined connection sends (redis_wire)."""
    wire = state.db.wire
    if wire is None:
        return
    real = wire.call

    async def counting(*args: Any) -> Any:
        calls.append(args)
        return await real(*args)

    wire.call = counting  # type: ignore[method-assign]


async def fails_fast(call: Awaitable[Any], bound_s: float) -> StateUnavailable:
    t0 = time.monotonic()
    with pytest.raises(StateUnavailable) as caught:
        await asyncio.wait_for(call, 10)
    assert time.monotonic() - t0 < bound_s, caught.value
    return caught.value


# --- the round trip, reservations, the settlement queue -----------------------------------------
async def test_an_admission_is_one_round_trip(states: Callable[..., RedisState]) -> None:
    state = states()
    assert (await state.admissions.admit(req(rpm=5))).allowed  # the script is loaded now
    calls = count_commands(state.db.client)
    count_wire(state, calls)
    admit_sha = state.db.script("admit.lua", "utc.lua").sha
    shapes = [
        req(rpm=5),
        req(tpm=1000, tokens=10),
        req(budget=1.0, cost=0.1),
        req(rpm=5, tpm=1000, tokens=10, budget=1.0, cost=0.1),
        req(rpm=1),  # refused
    ]
    for shape in shapes * 4:
        await state.admissions.admit(shape)
    ours = [c for c in calls if c[0] != "EVALSHA" or c[1] != state.db.script("replicas.lua").sha]
    assert [(c[0], c[1]) for c in ours] == [("EVALSHA", admit_sha)] * 20
    assert (await state.admissions.admit(req())).allowed  # no limits: no round trip at all
    assert len([c for c in calls if c[1] == admit_sha]) == 20


async def test_a_reservation_never_settled_expires(
    states: Callable[..., RedisState], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_admissions, "RESERVATION_TTL_S", 1)
    state = states()
    adm, primary = state.admissions, state.admissions.primary
    month = utc_month(time.time())
    lost = await adm.admit(req(budget=1.0, cost=0.6))  # a replica that crashes never settles
    assert lost.allowed
    assert (await adm.admit(req(budget=1.0, cost=0.6))).refused == "budget"
    await asyncio.sleep(1.3)
    later = await adm.admit(req(budget=1.0, cost=0.6))
    assert later.allowed and later.budget_left_usd == pytest.approx(0.4)
    reservations = state.db.key("res", month, "c1")
    assert 39 * 86400 < await state.db.client.ttl(reservations) <= 40 * 86400
    # the lost one settles after all: its cost counts once, however often it is sent
    twice = dataclasses.replace(lost)
    adm.settle(lost, 0, 0.25)
    primary.settle(twice, 0, 0.25)  # the same ticket again, as a batch sent twice would
    adm.release(later)
    await adm.flush()
    assert await adm.spent("c1", month) == pytest.approx(0.25)
    raw = state.db.client
    account = state.db.key("acct", month, "c1")
    assert await raw.hget(account, "reserved") == b"0"
    assert 39 * 86400 < await raw.ttl(account) <= 40 * 86400
    assert not await raw.exists(state.db.key("res", month, "c1"))  # nothing open any more


async def test_windows_expire(states: Callable[..., RedisState]) -> None:
    state = states()
    await state.admissions.admit(req(rpm=5, tpm=100, tokens=1))
    for name in ("req", "tok"):
        assert 0 < await state.db.client.ttl(state.db.key(name, "c1")) <= 120


@pytest.mark.parametrize("wire", [True, False], ids=["pipelined-connection", "redis-py"])
async def test_settlements_are_queued_and_sent_in_one_pipeline(
    states: Callable[..., RedisState], wire: bool
) -> None:
    state = states()
    adm, primary, client = state.admissions, state.admissions.primary, state.db.client
    month = utc_month(time.time())
    admitted = [
        await adm.admit(req(tpm=10**9, tokens=10, budget=100.0, cost=0.01)) for _ in range(600)
    ]
    sent: list[list[str]] = []
    if state.db.wire is not None and not wire:
        state.db.wire.close()
        state.db.wire = None  # the library alternative: a redis-py pipeline
    elif wire:
        assert state.db.wire is not None
        proto = state.db.wire._proto
        assert proto is not None and proto.transport is not None
        real_write, real_call = proto.transport.write, state.db.wire.call
        batch: list[str] = []

        def write(data: bytes) -> None:
            if batch:
                sent.append(list(batch))
                batch.clear()
            real_write(data)

        async def call(*args: Any) -> Any:
            batch.append(str(args[0]))
            return await real_call(*args)

        proto.transport.write = write  # type: ignore[method-assign]
        state.db.wire.call = call  # type: ignore[method-assign]
    real_pipeline = client.pipeline

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = real_pipeline(*args, **kwargs)
        real_execute = pipe.execute

        async def execute(*a: Any, **k: Any) -> Any:
            sent.append([str(command[0][0]) for command in pipe.command_stack])
            return await real_execute(*a, **k)

        pipe.execute = execute  # type: ignore[method-assign]
        return pipe

    client.pipeline = pipeline  # type: ignore[method-assign]
    calls = count_commands(client)
    for a in admitted:
        adm.settle(a, 7, 0.005)
    assert calls == [] and primary.queued == 600  # nothing sent on the request path
    deadline = time.monotonic() + 5
    while primary.queued and time.monotonic() < deadline:
        await asyncio.sleep(0.02)  # the background task, no flush()
    assert primary.queued == 0
    assert sent == [["EVALSHA"] * 3]  # 600 settlements: one pipeline of three batch scripts
    assert await adm.spent("c1", month) == pytest.approx(3.0)
    buckets = await client.hgetall(state.db.key("tok", "c1"))
    assert sum(int(v) for v in buckets.values()) == 600 * 7


async def test_the_settlement_queue_is_bounded(
    states: Callable[..., RedisState],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(redis_admissions, "MAX_QUEUE", 10)
    primary = states().admissions.primary
    for i in range(25):
        primary.add_spend(f"c{i}", "2026-01", 1.0)  # no running flush: they pile up
    assert primary.queued == 10 and primary.dropped == 15
    assert [r.message for r in caplog.records].count(
        "the Redis settlement queue is full (10): the oldest settlements are dropped"
    ) == 1


async def test_budget_exact_under_concurrency_with_settlements(
    states: Callable[..., RedisState],
) -> None:
    prefix = f"rgtest:{uuid.uuid4().hex[:12]}:"
    one, two = states(prefix), states(prefix)
    month = utc_month(time.time())
    results = await asyncio.gather(
        *((one if i % 2 else two).admissions.admit(req(budget=1.0, cost=0.07)) for i in range(100))
    )
    allowed = [a for a in results if a.allowed]
    assert len(allowed) == 14  # 14 * 0.07 = 0.98
    for i, a in enumerate(allowed):
        (one if i % 2 else two).admissions.settle(a, 1, 0.05)
    await one.admissions.flush()
    await two.admissions.flush()
    assert await one.admissions.spent("c1", month) == pytest.approx(0.70, abs=1e-12)
    assert await one.db.client.hget(one.db.key("acct", month, "c1"), "spent") == b"700000000"
    more = [await two.admissions.admit(req(budget=1.0, cost=0.075)) for _ in range(5)]
    assert [a.allowed for a in more] == [True, True, True, True, False]
    assert more[-1].budget_left_usd == pytest.approx(0.0, abs=1e-12)


async def test_a_cancelled_caller_is_cancelled_and_closing_never_waits(
    states: Callable[..., RedisState],
) -> None:
    """The driver may swallow a cancellation mid-command: the caller is cancelled all the same
    (never a StateUnavailable that would look like an outage), and a backend closed while its
    background tasks are mid-command closes at once."""
    adm = states().admissions
    await adm.admit(req(rpm=10_000))
    for delay in (0.0, 0.0002, 0.0005, 0.001, 0.002, 0.005) * 3:
        task = asyncio.create_task(adm.admit(req(rpm=10_000)))
        await asyncio.sleep(delay)
        task.cancel()
        await asyncio.wait({task}, timeout=3)
        assert task.done() and (task.cancelled() or task.result().allowed)
    assert not adm.down
    for _ in range(10):
        state = states()
        await state.keys.pauses()  # the heartbeat starts, its first beat under way
        t0 = time.monotonic()
        await state.aclose()
        assert time.monotonic() - t0 < 0.5


# --- a dead or frozen Redis -----------------------------------------------------------------------
def every_call(state: RedisState) -> list[Callable[[], Awaitable[Any]]]:
    primary = state.admissions.primary
    record = KeyRecord("k1", "p1")
    return [
        lambda: primary.admit(req(rpm=5, budget=1.0, cost=0.1)),
        lambda: primary.spent("c1", "2026-01"),
        lambda: primary.seed_spend("2026-01", {"c1": 1.0}),
        lambda: primary.flush(),
        lambda: primary.ping(),
        lambda: state.keys.load(),
        lambda: state.keys.save([record]),
        lambda: state.keys.apply([KeyEvent("k1", "p1", "used")], Rules()),
        lambda: state.keys.pause("p1", time.time() + 10),
        lambda: state.keys.pauses(),
        lambda: state.cache.get("k"),
        lambda: state.cache.put("k", b"v", 10),
        lambda: state.claims.claim("once", 10),
        lambda: state.claims.claimed("once"),
        lambda: state.db.beat(),
    ]


@pytest.mark.parametrize("fault", ["killed", "frozen"])
async def test_a_dead_redis_fails_every_call_quickly(
    server: Server, states: Callable[..., RedisState], fault: str
) -> None:
    state = states(f"rgdead:{uuid.uuid4().hex[:8]}:", url=server.url, timeout_s=0.5)
    first = await state.admissions.admit(req(rpm=5, budget=1.0, cost=0.1))
    assert first.allowed and first.ticket.startswith("r:")
    await state.keys.save([KeyRecord("k1", "p1")])
    state.admissions.settle(first, 1, 0.1)  # queued: flush must fail, not hang
    if fault == "killed":
        server.kill()
    else:
        server.freeze()
    try:  # all at once: each within timeout_s (0.5), plus scheduling slack
        errors = await asyncio.gather(*(fails_fast(call(), 1.0) for call in every_call(state)))
        assert all(str(error).startswith("redis: ") for error in errors), errors
        assert state.admissions.primary.queued == 1  # kept for when Redis returns
    finally:
        if fault == "frozen":
            server.freeze(False)


async def test_failover_shares_warns_once_and_returns_to_redis(
    server: Server, states: Callable[..., RedisState], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relaygate.state")
    state = states(f"rgfail:{uuid.uuid4().hex[:8]}:", url=server.url, timeout_s=0.5)
    adm = state.admissions
    adm.replicas = lambda: 3
    month = utc_month(time.time())
    seen = await adm.admit(req(budget=0.9, cost=0.3))  # Redis says 0.6 left
    assert seen.ticket.startswith("r:") and seen.budget_left_usd == pytest.approx(0.6)
    server.kill()

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    t0 = time.monotonic()
    first = await adm.admit(req(rpm=10))
    assert time.monotonic() - t0 < 1.0 and first.allowed and first.ticket.startswith("m")
    assert warnings() == [
        "Redis unavailable (ConnectionError): limits fall back to this replica's share"
    ]
    t0 = time.monotonic()
    rpm = [await adm.admit(req(rpm=10)) for _ in range(3)]  # share: 10 // 3 = 3
    assert [a.allowed for a in rpm] == [True, True, False] and rpm[-1].refused == "requests"
    assert rpm[0].rpm == 10  # the client's own limit is shown
    tpm = [await adm.admit(req("c2", tpm=100, tokens=30)) for _ in range(2)]  # share 33
    assert [a.allowed for a in tpm] == [True, False]
    budget = [await adm.admit(req(budget=0.9, cost=0.15)) for _ in range(2)]  # 0.6 / 3
    assert [a.allowed for a in budget] == [True, False] and budget[0].budget_usd == 0.9
    fresh = [await adm.admit(req("c3", budget=0.9, cost=0.3)) for _ in range(2)]  # 0.9 / 3
    assert [a.allowed for a in fresh] == [True, False]
    assert time.monotonic() - t0 < 0.2  # straight to the fallback: no wait on Redis
    assert len(warnings()) == 1
    adm.settle(budget[0], 10, 0.1)  # spent while Redis was away: sent when it returns
    assert await adm.spent("c1", month) == pytest.approx(0.1)  # the fallback's, meanwhile

    await asyncio.to_thread(server.start)
    deadline = time.monotonic() + 5
    while adm.down and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not adm.down
    assert [r.getMessage() for r in caplog.records].count(
        "Redis is back: limits are shared again"
    ) == 1
    back = await adm.admit(req(rpm=10))
    assert back.ticket.startswith("r:")
    await adm.flush()
    assert await adm.spent("c1", month) == pytest.approx(0.1)  # Redis has it now

    server.kill()  # a second outage: a second warning
    assert (await adm.admit(req("c4", rpm=10))).ticket.startswith("m")
    assert len(warnings()) == 2


async def test_the_heartbeat_counts_replicas(states: Callable[..., RedisState]) -> None:
    prefix = f"rgtest:{uuid.uuid4().hex[:12]}:"
    one, two = states(prefix), states(prefix)
    assert await one.db.beat() == 1
    assert await two.db.beat() == 2
    assert await one.db.beat() == 2 and one.db.replicas == 2
    await two.aclose()
    assert await one.db.beat() == 1
    assert one.admissions.replicas() == 1


async def test_no_url_or_password_in_errors_or_logs(
    states: Callable[..., RedisState], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"redis://:{CANARY}@127.0.0.1:{free_port()}/0"
    state = states(f"rgcanary:{uuid.uuid4().hex[:8]}:", url=url, timeout_s=0.5)
    state.admissions.primary.add_spend("c1", "2026-01", 1.0)  # something for flush() to send
    for call in every_call(state):
        error = await fails_fast(call(), 1.0)
        text = "".join(traceback.format_exception(error))
        assert CANARY not in text and "127.0.0.1" not in text, text
        assert CANARY not in repr(error)
    answered = await state.admissions.admit(req(rpm=1))  # the failover: logged, not raised
    assert answered.allowed
    assert any("Redis unavailable" in r.getMessage() for r in caplog.records)
    assert CANARY not in caplog.text
    with pytest.raises(ValueError) as bad:
        open_redis(f"http://:{CANARY}@h/0", prefix="x:", timeout_s=1, fallback=MemoryAdmissions())
    assert CANARY not in str(bad.value)
