"""SPEC §11a quota buckets end to end: a quota-exhausted answer on one key parks every key of its
bucket (not keys of another bucket, not keys without one), in memory and through Redis, shown
by /keys/status, /admin/keys and the dashboard. Real server, fake upstream scripted per key."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from relaygate.keys.pool import key_id
from tests.conftest import ADMIN_SECRET, openai_provider
from tests.fakes.openai_upstream import FakeOpenAI, Reply, errors
from tests.integration._redis import PrivateRedis

MSG = [{"role": "user", "content": "hello bucket"}]
KEYS = [
    {"key": "sk-a", "bucket": "project-a"},
    {"key": "sk-b", "bucket": "project-a"},
    {"key": "sk-c", "bucket": "project-b"},
    "sk-d",  # the plain form: a bucket of its own
]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[PrivateRedis]:
    server = PrivateRedis().start()
    yield server
    server.stop()


def _config(fake: FakeOpenAI, **extra: object) -> dict[str, object]:
    provider = openai_provider(fake, KEYS, key_strategy="round_robin")  # type: ignore[arg-type]
    return {
        "providers": {"up": provider},
        "retries": {"backoff_base_s": 0.01, "backoff_max_s": 0.05},
        "admin_secret": ADMIN_SECRET,
        **extra,
    }


def _post(gw) -> httpx.Response:
    body = {"model": "up/gpt-4o-mini", "messages": MSG}
    return httpx.post(gw.v1 + "/chat/completions", json=body, headers=gw.headers(), timeout=10)


def _by_id(keys: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    return {str(k["key_id"]): k for k in keys}


def _kid(key: str) -> str:
    return key_id("up", key)


def _spend_a(gw, fake: FakeOpenAI) -> None:
    """sk-a answers a quota-exhausted 429: sk-b (its bucket) is skipped, sk-c answers."""
    resp = _post(gw)
    assert resp.status_code == 200
    assert resp.headers["x-relaygate-key-id"] == _kid("sk-c")
    assert [c.key for c in fake.calls()] == ["sk-a", "sk-c"]


def test_a_spent_quota_parks_its_bucket_not_the_others(live_gateway, fake_openai) -> None:
    fake_openai.script("sk-a", Reply(status=429, error=errors.insufficient_quota()))
    gw = live_gateway(_config(fake_openai))
    _spend_a(gw, fake_openai)
    for _ in range(4):  # only sk-c and sk-d serve now
        assert _post(gw).status_code == 200
    assert {c.key for c in fake_openai.calls()[2:]} == {"sk-c", "sk-d"}

    status = httpx.get(gw.base + "/keys/status", headers=gw.headers(), timeout=5).json()
    keys = _by_id(status["keys"])
    a, b, c, d = (keys[_kid(k)] for k in ("sk-a", "sk-b", "sk-c", "sk-d"))
    assert (a["bucket"], b["bucket"], c["bucket"], d["bucket"]) == (
        "project-a",
        "project-a",
        "project-b",
        None,
    )
    assert a["state"] == b["state"] == "exhausted"
    assert c["state"] == d["state"] == "ready"
    assert b["until"] == pytest.approx(a["until"], abs=0.01)  # back together
    assert b["reason"] == f"quota exhausted: bucket project-a (via {_kid('sk-a')})"
    assert b["requests_today"] == 0  # never sent: nothing counted against it

    admin = httpx.get(gw.base + "/admin/keys", headers={"admin-secret": ADMIN_SECRET}, timeout=5)
    assert _by_id(admin.json()["keys"])[_kid("sk-b")]["bucket"] == "project-a"
    page = httpx.get(gw.base + "/status.json", timeout=5).json()
    shown = {k["key_id"]: k for p in page["providers"] for k in p["keys"]}
    assert shown[_kid("sk-b")]["bucket"] == "project-a"
    assert shown[_kid("sk-b")]["state"] == "exhausted"


def test_a_bucket_key_already_invalid_stays_invalid(live_gateway, fake_openai) -> None:
    fake_openai.script("sk-b", Reply(status=401, error=errors.invalid_key()))
    fake_openai.script("sk-a", Reply(), Reply(status=429, error=errors.insufficient_quota()))
    gw = live_gateway(_config(fake_openai, retries={"backoff_base_s": 0.01}))
    assert _post(gw).status_code == 200  # sk-a
    assert _post(gw).status_code == 200  # sk-b rejected -> sk-c
    for _ in range(2):
        assert _post(gw).status_code == 200  # sk-d, then sk-a spent -> sk-c
    states = _by_id(gw.gateway.key_states())
    assert states[_kid("sk-a")]["state"] == "exhausted"
    assert states[_kid("sk-b")]["state"] == "invalid"  # an admin's matter, not the bucket's


def test_through_redis_the_bucket_is_parked_for_every_replica(
    live_gateway, fake_openai, redis_server: PrivateRedis
) -> None:
    fake_openai.script("sk-a", Reply(status=429, error=errors.insufficient_quota()))
    first = live_gateway(_config(fake_openai, redis_url=redis_server.url))
    second = live_gateway(_config(fake_openai, redis_url=redis_server.url))
    _spend_a(first, fake_openai)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the other replica merges the shared records
        seen = _by_id(second.gateway.key_states())
        if seen[_kid("sk-b")]["state"] == "exhausted":
            break
        time.sleep(0.05)
    assert seen[_kid("sk-b")]["state"] == "exhausted"
    assert seen[_kid("sk-b")]["reason"].startswith("quota exhausted: bucket project-a")
    assert seen[_kid("sk-c")]["state"] == "ready"
    before = len(fake_openai.calls())
    for _ in range(4):
        assert _post(second).status_code == 200
    assert {c.key for c in fake_openai.calls()[before:]} == {"sk-c", "sk-d"}
