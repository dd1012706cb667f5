"""The KeyStates contract, on memory, SQLite, Postgres and Redis, with keys/policy.apply as the
transition and the default Rules: each event kind of SPEC §4 gives the fields it should, a key
never seen starts fresh, records come back in the order first touched, snapshots round-trip, and
provider pauses only ever extend. Times are the backend's clock: real time, except memory's."""

from __future__ import annotations

import time

import pytest

from relaygate.state.records import EventKind, KeyEvent, KeyRecord, Rules, utc_day
from tests.state.conftest import Bounded

RULES = Rules()
SLACK_S = 3.0  # the backend's clock against this test's


def ev(kind: EventKind, key: str = "k1", **fields: object) -> KeyEvent:
    return KeyEvent(key, "openai", kind, **fields)  # type: ignore[arg-type]


async def one(keys: Bounded, event: KeyEvent) -> KeyRecord:
    (record,) = await keys.apply([event], RULES)
    return record


def now_of(keys: Bounded) -> float:
    return keys.clock.t if keys.clock is not None else time.time()


async def test_a_key_never_seen_starts_fresh(keys: Bounded) -> None:
    assert await keys.load() == []
    record = await one(keys, ev("used"))
    assert (record.key_id, record.provider, record.state) == ("k1", "openai", "ready")
    assert (record.until, record.reason, record.fail_streak, record.next_cooldown_s) == (
        None,
        None,
        0,
        0.0,
    )
    assert (record.requests_today, record.requests_total) == (1, 1)
    assert (record.tokens_today, record.tokens_total) == (0, 0)
    assert record.day == utc_day(now_of(keys))
    assert [r.key_id for r in await keys.load()] == ["k1"]


async def test_used_unused_and_success_count(keys: Bounded) -> None:
    await keys.apply([ev("used"), ev("used"), ev("unused")], RULES)
    record = await one(keys, ev("success", tokens=120))
    assert (record.requests_today, record.requests_total) == (1, 1)
    assert (record.tokens_today, record.tokens_total) == (120, 120)
    record = await one(keys, ev("unused"))
    record = await one(keys, ev("unused"))  # never below zero
    assert (record.requests_today, record.requests_total) == (0, 0)
    assert record.state == "ready"


async def test_rate_limited_cools_for_the_providers_word_capped(keys: Bounded) -> None:
    now = now_of(keys)
    record = await one(keys, ev("rate_limited", status=429, retry_after_s=30.0))
    assert record.state == "cooling" and record.reason == "rate limited (429)"
    assert record.until == pytest.approx(now + 30, abs=SLACK_S)
    default = await one(keys, ev("rate_limited", key="k2", status=429))
    assert default.until == pytest.approx(now + RULES.default_cooldown_s, abs=SLACK_S)
    capped = await one(keys, ev("rate_limited", key="k3", status=429, retry_after_s=1e9))
    assert capped.until == pytest.approx(now + RULES.cooling_cap_s, abs=SLACK_S)


async def test_quota_exhausted_waits_for_the_reset(keys: Bounded) -> None:
    now = now_of(keys)
    record = await one(
        keys, ev("quota_exhausted", status=429, reset_at=now + 500, message="out of credit")
    )
    assert record.state == "exhausted" and record.reason == "quota exhausted: out of credit"
    assert record.until == pytest.approx(now + 500, abs=SLACK_S)
    default = await one(keys, ev("quota_exhausted", key="k2", status=402))
    assert default.until == pytest.approx(now + RULES.exhausted_default_s, abs=SLACK_S)


async def test_key_rejected_and_disable_make_it_invalid_until_enabled(keys: Bounded) -> None:
    record = await one(keys, ev("key_rejected", status=401))
    assert (record.state, record.until, record.reason) == (
        "invalid",
        None,
        "rejected by the provider (401)",
    )
    record = await one(keys, ev("enable"))
    assert (record.state, record.until, record.reason) == ("ready", None, None)
    record = await one(keys, ev("disable"))
    assert (record.state, record.reason) == ("invalid", "disabled by admin")
    record = await one(keys, ev("success", tokens=5))  # usage does not make it ready
    assert record.state == "invalid"


async def test_failures_in_a_row_cool_with_a_doubling_cooldown(keys: Bounded) -> None:
    now = now_of(keys)
    record = await one(keys, ev("server", status=500))
    record = await one(keys, ev("timeout"))
    assert (record.state, record.fail_streak) == ("ready", 2)
    record = await one(keys, ev("success"))
    assert record.fail_streak == 0
    for kind in ("server", "timeout", "server"):
        record = await one(keys, ev(kind, status=502))  # type: ignore[arg-type]
    assert record.state == "cooling" and record.reason == "3 failures in a row"
    assert record.until == pytest.approx(now + RULES.failure_cooldown_s, abs=SLACK_S)
    assert (record.fail_streak, record.next_cooldown_s) == (0, 2 * RULES.failure_cooldown_s)
    record = await one(keys, ev("enable"))
    assert (record.state, record.fail_streak, record.next_cooldown_s) == ("ready", 0, 0.0)


async def test_records_come_back_in_the_order_first_touched(keys: Bounded) -> None:
    records = await keys.apply(
        [ev("used", key="kb"), ev("used", key="ka"), ev("success", key="kb", tokens=7)], RULES
    )
    assert [r.key_id for r in records] == ["kb", "ka"]
    assert (records[0].requests_total, records[0].tokens_total) == (1, 7)
    assert (records[1].requests_total, records[1].tokens_total) == (1, 0)
    assert sorted(r.key_id for r in await keys.load()) == ["ka", "kb"]


async def test_save_load_round_trip_and_apply_continues_from_it(keys: Bounded) -> None:
    now = now_of(keys)
    today = utc_day(now)
    cooling = dict(state="cooling", until=now + 1000.5, reason="rate limited (429)")
    saved = [
        KeyRecord("s1", "openai", **cooling, fail_streak=2, next_cooldown_s=60.0, day=today,
                  requests_today=3, tokens_today=400, requests_total=30, tokens_total=9000),
        KeyRecord("s2", "anthropic", "invalid", None, "disabled by admin", day=today,
                  requests_total=5, tokens_total=77),
    ]  # fmt: skip
    await keys.save(saved)
    loaded = sorted(await keys.load(), key=lambda r: r.key_id)
    assert loaded == saved
    changed = KeyRecord("s2", "anthropic", "ready", None, None, 0, 0.0, today, 1, 1, 6, 78)
    await keys.save([changed])  # last writer wins
    assert sorted(await keys.load(), key=lambda r: r.key_id) == [saved[0], changed]
    record = await one(keys, KeyEvent("s1", "openai", "used"))
    assert (record.state, record.requests_today, record.requests_total) == ("cooling", 4, 31)
    assert record.until == pytest.approx(now + 1000.5)


async def test_pauses_only_extend(keys: Bounded) -> None:
    now = now_of(keys)
    assert await keys.pauses() == {}
    await keys.pause("openai", now + 100)
    await keys.pause("openai", now + 50)
    await keys.pause("anthropic", now + 30)
    pauses = await keys.pauses()
    assert pauses == {"openai": pytest.approx(now + 100), "anthropic": pytest.approx(now + 30)}
    await keys.pause("openai", now + 200)
    assert (await keys.pauses())["openai"] == pytest.approx(now + 200)
