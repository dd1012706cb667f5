"""SPEC §11, faults: the state stores going away never hang or fail a request.

- Redis stopped while traffic flows (a private redis-server this test kills): every request is
  answered, none slowly; limits fall back to this replica's share; one warning, not one per
  request; when Redis is back (same port) the gateway uses it again without a restart.
- Postgres unreachable (a TCP relay between the gateway and the server, cut by the test): the
  requests keep being served, their ledger rows wait in the bounded buffer, and all of them are
  in Postgres once the relay is mended."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest
import redis as redis_sync

from tests.conftest import CLIENT_KEY
from tests.fakes.openai_upstream import FakeOpenAI
from tests.faults._tcp_proxy import TcpProxy
from tests.integration._redis import PrivateRedis
from tests.pg import fresh_database

MSG = [{"role": "user", "content": "hi"}]


def _provider(fake: FakeOpenAI) -> dict[str, object]:
    return {"up": {"type": "openai", "base_url": fake.base_url, "keys": ["sk-up-1", "sk-up-2"]}}


async def _traffic(base: str, n: int, concurrency: int = 8) -> list[tuple[int, float]]:
    """n chat requests, `concurrency` at a time: (status, seconds) of each."""
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=10) as client:

        async def one() -> tuple[int, float]:
            async with gate:
                t0 = time.monotonic()
                r = await client.post(
                    base + "/v1/chat/completions",
                    headers={"Authorization": f"Bearer {CLIENT_KEY}"},
                    json={"model": "up/gpt-4o-mini", "messages": MSG},
                )
                return r.status_code, time.monotonic() - t0

        return await asyncio.gather(*(one() for _ in range(n)))


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis().start()
    yield server
    server.stop()


def test_redis_stopped_while_traffic_flows(
    live_gateway, fake_openai: FakeOpenAI, private_redis: PrivateRedis, caplog
) -> None:
    caplog.set_level(logging.WARNING)
    gw = live_gateway(
        {
            "redis_url": private_redis.url,
            "providers": _provider(fake_openai),
            "clients": [{"name": "tests", "key": CLIENT_KEY, "rpm": 100000}],
        }
    )
    assert all(s == 200 for s, _ in asyncio.run(_traffic(gw.base, 20)))
    r = redis_sync.Redis.from_url(private_redis.url)
    assert r.keys("*"), "the admissions went to Redis"
    r.close()

    async def during() -> list[tuple[int, float]]:
        flowing = asyncio.ensure_future(_traffic(gw.base, 200))
        await asyncio.sleep(0.2)
        private_redis.stop()  # killed, mid-traffic
        return await flowing

    answered = asyncio.run(during())
    assert [s for s, _ in answered] == [200] * 200
    assert max(t for _, t in answered) < 2.0, "a request waited on the dead Redis"
    answered = asyncio.run(_traffic(gw.base, 100))  # all of them without Redis
    assert [s for s, _ in answered] == [200] * 100
    assert max(t for _, t in answered) < 2.0
    redis_warnings = [r for r in caplog.records if "redis" in r.getMessage().lower()]
    assert 1 <= len(redis_warnings) <= 3, [r.getMessage() for r in redis_warnings]

    again = PrivateRedis(private_redis.port).start()  # back, on the same address, empty
    deadline = time.monotonic() + 10
    r = redis_sync.Redis.from_url(again.url)
    try:
        while time.monotonic() < deadline:
            assert all(s == 200 for s, _ in asyncio.run(_traffic(gw.base, 5)))
            if r.keys("*"):
                break
            time.sleep(0.2)
        assert r.keys("*"), "the gateway did not go back to Redis"
    finally:
        r.close()
        again.stop()


def test_rate_limit_falls_back_to_this_replicas_share(
    live_gateway, fake_openai: FakeOpenAI, private_redis: PrivateRedis
) -> None:
    gw = live_gateway(
        {
            "redis_url": private_redis.url,
            "providers": _provider(fake_openai),
            "clients": [{"name": "tests", "key": CLIENT_KEY, "rpm": 10}],
        }
    )
    private_redis.stop()
    answered = asyncio.run(_traffic(gw.base, 15, concurrency=1))
    # one replica known: its share is the whole limit, kept in its own memory
    assert [s for s, _ in answered] == [200] * 10 + [429] * 5
    assert max(t for _, t in answered) < 2.0


def test_postgres_unreachable_rows_wait_and_are_all_written(
    live_gateway, fake_openai: FakeOpenAI
) -> None:
    with fresh_database() as url:
        proxy = TcpProxy("127.0.0.1", 5432).mend()
        through = url.replace(":5432/", f":{proxy.port}/")
        try:
            gw = live_gateway({"database_url": through, "providers": _provider(fake_openai)})
            assert all(s == 200 for s, _ in asyncio.run(_traffic(gw.base, 20)))
            proxy.cut()
            answered = asyncio.run(_traffic(gw.base, 30))
            assert [s for s, _ in answered] == [200] * 30
            assert max(t for _, t in answered) < 3.0
            time.sleep(0.5)
            assert gw.gateway.accounting.ledger.depth > 0, "rows wait while Postgres is away"
            proxy.mend()
            deadline = time.monotonic() + 15
            count = 0
            while time.monotonic() < deadline:
                with psycopg.connect(url) as db:
                    (count,) = db.execute("SELECT COUNT(*) FROM ledger").fetchone()  # type: ignore[misc]
                if count == 50:
                    break
                time.sleep(0.2)
            assert count == 50
            assert gw.gateway.accounting.ledger.depth == 0
        finally:
            proxy.stop()
