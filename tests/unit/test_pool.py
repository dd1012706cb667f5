"""The key pool on its own: selection, proactive limits, and what each failure does to a key."""

from __future__ import annotations

from collections import Counter

import pytest

from relaygate.config.model import KeyLimits, KeySpec, RetryConfig
from relaygate.keys.pool import KeyPool, key_id
from relaygate.types import Failure, Usage


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_pool(n: int = 3, *, clock: Clock | None = None, **kw: object) -> KeyPool:
    specs = [KeySpec(key=f"sk-key-{i}") for i in range(n)]
    return KeyPool("p", specs, clock=clock or Clock(), **kw)  # type: ignore[arg-type]


def test_key_id_is_provider_and_8_hex_of_sha256_or_label():
    import hashlib

    assert key_id("groq", "gsk_a") == "groq:" + hashlib.sha256(b"gsk_a").hexdigest()[:8]
    assert key_id("groq", "gsk_a", "team-a") == "team-a"


def test_round_robin_spreads_evenly():
    pool = make_pool(3, strategy="round_robin")
    used = Counter()
    for _ in range(30):
        lease = pool.acquire()
        assert lease is not None
        used[lease.key_id] += 1
        lease.succeeded(Usage(1, 1))
    assert sorted(used.values()) == [10, 10, 10]


def test_least_used_prefers_fewest_requests_today_ties_round_robin():
    pool = make_pool(3, strategy="least_used")
    first = pool.acquire()  # all at 0: the first in round-robin order
    assert first is not None and first.key is pool.keys[0]
    pool.keys[0].requests_today = 5
    picks = [pool.acquire().key for _ in range(4)]  # type: ignore[union-attr]
    assert picks == [pool.keys[1], pool.keys[2], pool.keys[1], pool.keys[2]]


def test_rpm_limit_skips_a_key_before_the_provider_refuses():
    clock = Clock()
    pool = make_pool(2, clock=clock, strategy="round_robin", limits=KeyLimits(rpm=2))
    got = [pool.acquire() for _ in range(4)]
    assert all(g is not None for g in got)
    assert pool.acquire() is None  # 2 keys x 2 rpm used up
    wait = pool.next_ready_in()
    assert wait is not None and 59 <= wait <= 60
    clock.t += 61
    assert pool.acquire() is not None


def test_rpd_limit_and_day_rollover():
    clock = Clock(1_800_000_000.0 - (1_800_000_000 % 86400) + 3600)  # 01:00 UTC
    pool = make_pool(1, clock=clock, limits=KeyLimits(rpd=3))
    for _ in range(3):
        assert pool.acquire() is not None
    assert pool.acquire() is None
    assert pool.next_ready_in() == pytest.approx(23 * 3600, abs=1)
    clock.t += 23 * 3600 + 1
    assert pool.acquire() is not None
    assert pool.keys[0].requests_today == 1
    assert pool.keys[0].requests_total == 4


def test_tpm_limit_counts_real_usage():
    clock = Clock()
    pool = make_pool(1, clock=clock, limits=KeyLimits(tpm=100))
    lease = pool.acquire(est_tokens=10)
    assert lease is not None
    lease.succeeded(Usage(60, 30))
    assert pool.acquire(est_tokens=20) is None  # 90 used + 20 > 100
    assert pool.acquire(est_tokens=5) is not None


def test_rate_limited_cools_for_retry_after_or_default():
    clock = Clock()
    pool = make_pool(3, clock=clock, strategy="round_robin")
    a = pool.acquire()
    assert a is not None
    a.failed(Failure("rate_limited", 429, retry_after_s=12))
    assert a.key.state == "cooling" and a.key.until == clock.t + 12
    b = pool.acquire()
    assert b is not None and b.key is not a.key
    b.failed(Failure("rate_limited", 429))
    assert b.key.until == clock.t + 60  # the default
    clock.t += 12.5
    assert a.key.key_id in {s["key_id"] for s in pool.states() if s["state"] == "ready"}


def test_quota_exhausted_parks_until_reset():
    clock = Clock()
    pool = make_pool(2, clock=clock)
    lease = pool.acquire()
    assert lease is not None
    lease.failed(Failure("quota_exhausted", 429, reset_at=clock.t + 7200))
    assert lease.key.state == "exhausted" and lease.key.until == clock.t + 7200
    other = pool.acquire()
    assert other is not None and other.key is not lease.key
    other.failed(Failure("quota_exhausted", 402))
    assert other.key.until == clock.t + RetryConfig().exhausted_default_s
    assert pool.acquire() is None
    assert pool.next_ready_in() == pytest.approx(3600)


def test_key_rejected_is_invalid_until_enabled():
    pool = make_pool(1)
    lease = pool.acquire()
    assert lease is not None
    lease.failed(Failure("key_rejected", 401))
    assert lease.key.state == "invalid"
    assert pool.acquire() is None
    assert pool.next_ready_in() is None  # nothing comes back by itself
    pool.enable(lease.key)
    assert pool.acquire() is not None


def test_three_server_failures_cool_30s_doubling_to_10_minutes():
    clock = Clock()
    pool = make_pool(1, clock=clock)
    key = pool.keys[0]
    cooldowns = []
    for _ in range(7):
        for _ in range(3):
            lease = pool.acquire()
            assert lease is not None
            lease.failed(Failure("server", 500))
        assert key.state == "cooling"
        cooldowns.append(key.until - clock.t)  # type: ignore[operator]
        clock.t = key.until + 0.1  # type: ignore[operator]
    assert cooldowns == [30, 60, 120, 240, 480, 600, 600]
    lease = pool.acquire()
    assert lease is not None
    lease.succeeded(Usage(1, 1))
    assert key.next_cooldown_s == 0 and key.fail_streak == 0


def test_bad_request_leaves_the_key_alone():
    pool = make_pool(1)
    lease = pool.acquire()
    assert lease is not None
    lease.failed(Failure("bad_request", 400))
    assert lease.key.state == "ready" and lease.key.fail_streak == 0


def test_every_key_429_backs_off_the_provider_not_the_keys():
    clock = Clock()
    pool = make_pool(3, clock=clock, strategy="round_robin")
    for wait in (5, 8, 6):
        lease = pool.acquire()
        assert lease is not None
        lease.failed(Failure("rate_limited", 429, retry_after_s=wait))
        clock.t += 0.5
    assert all(k.state == "ready" for k in pool.keys)  # no key is marked bad
    assert pool.acquire() is None  # but the provider as a whole rests
    wait = pool.next_ready_in()
    assert wait is not None and 5 <= wait <= 8
    clock.t += wait + 0.01
    assert pool.acquire() is not None


def test_429s_spread_beyond_the_window_only_cool_keys():
    clock = Clock()
    pool = make_pool(2, clock=clock, strategy="round_robin")
    first = pool.acquire()
    assert first is not None
    first.failed(Failure("rate_limited", 429, retry_after_s=100))
    clock.t += 30  # past the 10 s window
    second = pool.acquire()
    assert second is not None
    second.failed(Failure("rate_limited", 429, retry_after_s=100))
    assert first.key.state == "cooling" and second.key.state == "cooling"
    assert pool.paused_until == 0


def test_states_never_show_the_key_and_persist_round_trip():
    pool = make_pool(2)
    lease = pool.acquire()
    assert lease is not None
    lease.failed(Failure("key_rejected", 401))
    states = pool.states()
    assert all("sk-key" not in repr(s) for s in states)
    rows = pool.take_dirty()
    again = make_pool(2)
    again.restore(rows)
    assert [k.state for k in again.keys] == [k.state for k in pool.keys]
    assert again.keys[0].requests_total == pool.keys[0].requests_total


def test_keyless_provider_has_one_pseudo_key():
    pool = KeyPool("local", [], needs_key=False)
    lease = pool.acquire()
    assert lease is not None and lease.secret is None and lease.key_id == "local:nokey"
