"""The response cache in Redis (SPEC §7b, §11): two gateways on one Redis share their entries;
a Redis that is away or silent never fails or hangs a request (served uncached, `bypass`, one
warning); and what the cache keeps in Redis, like /metrics, carries no secret (canary keys)."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import ADMIN_SECRET
from tests.fakes import openai_upstream as oa
from tests.fakes._server import free_port
from tests.integration._doors import MODELS, provider_entry
from tests.integration._redis import PrivateRedis

UPSTREAM_KEY = "sk-canary-upstream-7f3a9c1e5d"
CLIENT_KEY = "rg-canary-client-4b8e2d6f0a1c"
MODEL = "openai/" + MODELS["openai"]


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis().start()
    yield server
    server.stop()


@pytest.fixture
def fake() -> Iterator[oa.FakeOpenAI]:
    upstream = oa.FakeOpenAI().start()
    upstream.default = oa.Reply(text="Shared words.", usage=(5, 3))
    yield upstream
    upstream.stop()


def config(fake: oa.FakeOpenAI, redis_url: str, **cache: Any) -> dict[str, Any]:
    return {
        "providers": {"openai": provider_entry("openai", fake, UPSTREAM_KEY)},
        "cache": {"enabled": True, **cache},
        "redis_url": redis_url,
        "admin_secret": ADMIN_SECRET,
        "clients": [{"name": "canary", "key": CLIENT_KEY}],
    }


def post(base: str, *, stream: bool = False, text: str = "hi") -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": text}], "stream": stream}
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    return httpx.post(base + "/v1/chat/completions", json=body, headers=headers, timeout=15)


def test_two_gateways_share_entries_through_redis(live_gateway, fake, private_redis):
    one = live_gateway(config(fake, private_redis.url))
    two = live_gateway(config(fake, private_redis.url))
    first = post(one.base)
    assert first.headers["x-relaygate-cache"] == "miss"
    answer = post(two.base, stream=True)  # the other replica, as a stream
    assert answer.headers["x-relaygate-cache"] == "hit"
    assert "Shared words." in answer.text and answer.text.endswith("data: [DONE]\n\n")
    assert answer.headers["x-relaygate-provider"] == "openai"
    assert len(fake.calls()) == 1
    # a stream stored by one replica is a whole answer on the other
    assert post(two.base, stream=True, text="streamed").headers["x-relaygate-cache"] == "miss"
    whole = post(one.base, text="streamed")
    assert whole.headers["x-relaygate-cache"] == "hit"
    assert whole.json()["choices"][0]["message"]["content"] == "Shared words."
    assert len(fake.calls()) == 2


def test_redis_keeps_no_secret_and_metrics_show_none(live_gateway, fake, private_redis):
    gw = live_gateway(config(fake, private_redis.url))
    post(gw.base)
    assert post(gw.base).headers["x-relaygate-cache"] == "hit"
    client = redis.Redis.from_url(private_redis.url)
    try:
        names = client.keys("*")
        cached = [n for n in names if b":cache:" in n]
        assert len(cached) == 1
        for name in names:
            kind = client.type(name)
            blob = client.get(name) if kind == b"string" else repr(client.dump(name)).encode()
            for secret in (UPSTREAM_KEY, CLIENT_KEY, ADMIN_SECRET):
                assert secret.encode() not in name and secret.encode() not in (blob or b"")
        assert 0 < client.pttl(cached[0]) <= 900_000
    finally:
        client.close()
    text = httpx.get(gw.base + "/metrics", headers={"admin-secret": ADMIN_SECRET}).text
    assert "relaygate_cache_requests_total" in text
    for secret in (UPSTREAM_KEY, CLIENT_KEY, ADMIN_SECRET):
        assert secret not in text


def test_redis_away_serves_requests_uncached(live_gateway, fake, caplog):
    caplog.set_level(logging.WARNING, "relaygate.cache")
    gw = live_gateway(config(fake, f"redis://127.0.0.1:{free_port()}/0"))
    words = [post(gw.base).headers["x-relaygate-cache"] for _ in range(3)]
    assert words == ["bypass"] * 3
    assert len(fake.calls()) == 3
    warnings = [r for r in caplog.records if r.name == "relaygate.cache"]
    assert len(warnings) == 1 and "uncached" in warnings[0].getMessage()
    for secret in (UPSTREAM_KEY, CLIENT_KEY):
        assert secret not in caplog.text


def test_a_silent_redis_never_hangs_a_request(live_gateway, fake):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts connections (the kernel does) and never answers
    try:
        port = silent.getsockname()[1]
        gw = live_gateway(config(fake, f"redis://127.0.0.1:{port}/0"))
        started = time.monotonic()
        answer = post(gw.base, stream=True)
        assert answer.status_code == 200 and "words." in answer.text
        assert answer.headers["x-relaygate-cache"] == "bypass"
        assert time.monotonic() - started < 5  # each Redis wait is bounded (0.5 s)
    finally:
        silent.close()
