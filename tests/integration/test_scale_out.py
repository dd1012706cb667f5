"""SPEC §11: three `relaygate serve` processes on one Redis behave as one gateway. Each replica is
a real subprocess on its own port; requests are spread over them round robin; the upstream is a
fake OpenAI on a real socket; Redis is a private redis-server this module starts."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.fakes._server import free_port
from tests.fakes.openai_upstream import FakeOpenAI, Reply, errors
from tests.integration._proc import clean_env, start_server, stop
from tests.integration._redis import PrivateRedis

ADMIN_SECRET = "admin-secret-for-scale-out"
BUDGET_KEY = "cl-budget-key-0001"
RPM_KEY = "cl-rpm-key-0002"
TWIN_KEY = "cl-twin-key-0003"  # a second client named like RPM_KEY's: never shares its window
KEY_A, KEY_B = "sk-upstream-aaaa-1111", "sk-upstream-bbbb-2222"
MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()


def _config(upstream: FakeOpenAI) -> dict[str, object]:
    return {
        "providers": {
            "up": {
                "type": "openai",
                "base_url": upstream.base_url,
                "keys": [{"key": KEY_A, "label": "up:a"}, {"key": KEY_B, "label": "up:b"}],
                "models": ["gpt-4o-mini"],
            }
        },
        "clients": [
            {"name": "capped", "key": BUDGET_KEY, "monthly_budget_usd": 1.0},
            {"name": "app", "key": RPM_KEY, "rpm": 20},
            {"name": "app", "key": TWIN_KEY, "rpm": 20},
        ],
        "pricing": {"up/gpt-4o-mini": {"input_per_mtok": 0, "output_per_mtok": 1000}},
        "retries": {"backoff_base_s": 0.01, "max_attempts": 2},
    }


class Replicas:
    def __init__(self, procs: list[subprocess.Popen[str]], ports: list[int]) -> None:
        self.procs, self.ports = procs, ports
        self._next = itertools.cycle(ports)

    def url(self, i: int | None = None) -> str:
        port = next(self._next) if i is None else self.ports[i]
        return f"http://127.0.0.1:{port}"

    def key_states(self, i: int) -> dict[str, dict[str, object]]:
        r = httpx.get(
            self.url(i) + "/admin/keys", headers={"Authorization": f"Bearer {ADMIN_SECRET}"}
        )
        r.raise_for_status()
        return {k["key_id"]: k for k in r.json()["keys"]}


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, redis: PrivateRedis, upstream: FakeOpenAI
) -> Iterator[Replicas]:
    work: Path = tmp_path_factory.mktemp("scale")
    (work / "relaygate.yaml").write_text(yaml.safe_dump(_config(upstream)))
    env = clean_env(
        REDIS_URL=redis.url,
        DATABASE_URL=f"sqlite:///{work / 'shared.db'}",
        ADMIN_SECRET=ADMIN_SECRET,
    )
    ports = [free_port() for _ in range(3)]
    procs = []
    try:
        for port in ports:
            procs.append(
                start_server(work, port, "--config", str(work / "relaygate.yaml"), env=env)
            )
        yield Replicas(procs, ports)
    finally:
        for proc in procs:
            stop(proc)


def _post(client: httpx.AsyncClient, url: str, key: str, **extra: object) -> object:
    return client.post(
        url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "up/gpt-4o-mini", "messages": MSG, **extra},
    )


async def _burst(replicas: Replicas, key: str, n: int, **extra: object) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        return await asyncio.gather(
            *(_post(client, replicas.url(), key, **extra) for _ in range(n))
        )  # type: ignore[arg-type]


def test_budget_for_10_lets_exactly_10_of_100_through_across_3_replicas(
    replicas: Replicas, upstream: FakeOpenAI
) -> None:
    # each request reserves 100 output tokens at $1 per 1k = $0.10 and really costs that much
    upstream.default = Reply(usage=(0, 100), delay_s=0.2)
    before = len(upstream.calls())
    answers = asyncio.run(_burst(replicas, BUDGET_KEY, 100, max_tokens=100))
    statuses = [a.status_code for a in answers]
    assert statuses.count(200) == 10, statuses
    assert statuses.count(429) == 90
    assert all(
        a.json()["error"]["code"] == "budget_exceeded" for a in answers if a.status_code == 429
    )
    assert len(upstream.calls()) - before == 10
    upstream.default = Reply()


def test_rpm_20_lets_exactly_20_through_across_3_replicas(replicas: Replicas) -> None:
    answers = asyncio.run(_burst(replicas, RPM_KEY, 60))
    statuses = [a.status_code for a in answers]
    assert statuses.count(200) == 20, statuses
    assert statuses.count(429) == 40
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(refused.headers["retry-after"]) >= 1
    # a second client of the same name has a window of its own
    twin = asyncio.run(_burst(replicas, TWIN_KEY, 5))
    assert [a.status_code for a in twin] == [200] * 5


def _wait_state(replicas: Replicas, i: int, key_id: str, state: str, within: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < within:
        if replicas.key_states(i)[key_id]["state"] == state:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"replica {i}: {key_id} not {state} within {within} s")


def test_a_key_parked_by_one_replica_is_skipped_by_the_others_within_1s(
    replicas: Replicas, upstream: FakeOpenAI
) -> None:
    upstream.script(KEY_A, Reply(status=429, error=errors.rate_limit_minute("120s")), Reply())
    _park_key_a(replicas)  # replica 0 meets the 429 on key a (the retry lands on b)
    took = max(_wait_state(replicas, i, "up:a", "cooling", 1.0) for i in (1, 2))
    assert took < 1.0
    # the others now send everything to key b
    before = len(upstream.calls(KEY_A))
    with httpx.Client(timeout=10) as c:
        for i in (1, 2, 1, 2):
            r = c.post(
                replicas.url(i) + "/v1/chat/completions",
                headers={"Authorization": f"Bearer {TWIN_KEY}"},
                json={"model": "up/gpt-4o-mini", "messages": MSG},
            )
            assert r.status_code == 200 and r.headers["x-relaygate-key-id"] == "up:b"
    assert len(upstream.calls(KEY_A)) == before
    # an admin enabling it on replica 2 is seen by replica 0 within a second
    r = httpx.post(
        replicas.url(2) + "/admin/keys/up:a/enable",
        headers={"Authorization": f"Bearer {ADMIN_SECRET}"},
    )
    assert r.status_code == 200
    assert _wait_state(replicas, 0, "up:a", "ready", 1.0) < 1.0


def _park_key_a(replicas: Replicas) -> None:
    """Replica 0 sends until one of its requests met key a's 429."""
    with httpx.Client(timeout=10) as c:
        for _ in range(6):
            c.post(
                replicas.url(0) + "/v1/chat/completions",
                headers={"Authorization": f"Bearer {TWIN_KEY}"},
                json={"model": "up/gpt-4o-mini", "messages": MSG},
            )
            if replicas.key_states(0)["up:a"]["state"] == "cooling":
                return
    raise AssertionError("replica 0 never met key a's 429")


def test_key_usage_counts_are_shared(replicas: Replicas) -> None:
    time.sleep(0.6)  # two syncs
    views = [replicas.key_states(i) for i in range(3)]
    for key_id in ("up:a", "up:b"):
        totals = {v[key_id]["requests_total"] for v in views}
        assert len(totals) == 1, (key_id, totals)
    total = sum(views[0][k]["requests_total"] for k in ("up:a", "up:b"))
    assert total >= 10 + 20 + 5


def _relaygate(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relaygate", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_upstream_check_marking_a_key_invalid_is_seen_by_running_replicas(
    replicas: Replicas, upstream: FakeOpenAI, redis: PrivateRedis, tmp_path: Path
) -> None:
    upstream.script(KEY_B, Reply(status=401, error=errors.invalid_key()))
    config = tmp_path / "relaygate.yaml"
    config.write_text(yaml.safe_dump(_config(upstream)))
    env = clean_env(REDIS_URL=redis.url, DATABASE_URL=f"sqlite:///{tmp_path / 'check.db'}")
    done = _relaygate(tmp_path, env, "upstream", "check", "--config", str(config))
    checked_at = time.monotonic()
    assert "rejected" in done.stdout, done.stdout + done.stderr
    for i in range(3):
        left = 1.0 - (time.monotonic() - checked_at)
        _wait_state(replicas, i, "up:b", "invalid", max(left, 0.0))
    r = httpx.post(
        replicas.url(1) + "/admin/keys/up:b/enable",
        headers={"Authorization": f"Bearer {ADMIN_SECRET}"},
    )
    assert r.status_code == 200


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_workers_need_redis_and_share_one_rpm_window(
    redis: PrivateRedis, upstream: FakeOpenAI, tmp_path: Path
) -> None:
    config = tmp_path / "relaygate.yaml"
    config.write_text(yaml.safe_dump(_config(upstream)))
    database = f"sqlite:///{tmp_path / 'w.db'}"
    args = ("serve", "--workers", "2", "--config", str(config))
    refused = _relaygate(tmp_path, clean_env(DATABASE_URL=database), *args)
    assert refused.returncode == 2
    assert "REDIS_URL" in refused.stderr and "SPEC" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    port = free_port()
    # Redis database 1: the replicas' windows (database 0) are not this gateway's
    env = clean_env(REDIS_URL=redis.url.rsplit("/", 1)[0] + "/1", DATABASE_URL=database)
    proc = start_server(tmp_path, port, "--workers", "2", "--config", str(config), env=env)
    try:
        assert len(_children(proc.pid)) >= 2, "two worker processes"
        url = f"http://127.0.0.1:{port}"
        answers = asyncio.run(_burst_at(url, RPM_KEY, 30))
        assert sorted(r.status_code for r in answers) == [200] * 20 + [429] * 10
    finally:
        stop(proc)


async def _burst_at(url: str, key: str, n: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        return await asyncio.gather(*(_post(client, url, key) for _ in range(n)))  # type: ignore[arg-type]
