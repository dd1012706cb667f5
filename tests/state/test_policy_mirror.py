"""The Redis key script (state/lua/keys_apply.lua) and keys/policy.py agree: every event kind of
SPEC §4 on every starting state (ready; cooling and exhausted with their wait ahead, over, or
without an end; invalid; a record of an earlier day), with and without the provider's word
(retry_after_s, reset_at: usable, zero, negative, past, huge, not finite) and with failure
streaks around the threshold, gives the record the pure function gives at the same time; and so
do random sequences of events on a few keys (Hypothesis).

The records are seeded with `save` under a random prefix on the real server; Python's `now` is
the Redis TIME read right before the script runs, so times agree within TIME_SLACK_S. Starting
waits end far from `now` (minutes), so both sides always see the same side of them."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relaygate.keys.policy import apply
from relaygate.keys.sync import coalesce
from relaygate.state.memory_admissions import MemoryAdmissions
from relaygate.state.records import EventKind, KeyEvent, KeyRecord, Rules, utc_day
from tests.state.conftest import REDIS_URL, _delete_prefix, backend_module, require

KINDS: tuple[EventKind, ...] = (
    "used",
    "unused",
    "success",
    "rate_limited",
    "quota_exhausted",
    "bucket_exhausted",
    "key_rejected",
    "server",
    "timeout",
    "enable",
    "disable",
)
RULES = Rules()
TIGHT = Rules(
    default_cooldown_s=7.5,
    exhausted_default_s=90.0,
    failure_threshold=2,
    failure_cooldown_s=4.0,
    failure_cooldown_max_s=10.0,
    cooling_cap_s=20.0,
    exhausted_cap_s=120.0,
)
TIME_SLACK_S = 1.0
WAITS = (None, 30.0, 2.5, 0.0, -5.0, 1e9, float("inf"), float("-inf"), float("nan"))
RESETS = (None, 500.0, -10.0, 0.0, 1e9, float("inf"), float("nan"))  # reset_at - now
LONG = "out of credit: " + "é" * 150  # cut at 120 characters, not bytes


async def redis_now(raw: aioredis.Redis) -> float:
    seconds, micros = await raw.time()
    return seconds + micros / 1_000_000


def starts(now: float, rules: Rules) -> list[KeyRecord]:
    """Every starting state, each with failure streaks around the threshold."""
    today, before = utc_day(now), utc_day(now - 86400)
    shapes: list[dict[str, Any]] = [
        dict(state="ready"),
        dict(state="cooling", until=now + 600, reason="rate limited (429)"),
        dict(state="cooling", until=now - 600, reason="rate limited (429)"),
        dict(state="cooling", until=None, reason="odd: no end"),
        dict(state="exhausted", until=now + 900, reason="quota exhausted: x"),
        dict(state="exhausted", until=now - 900, reason="quota exhausted: x"),
        dict(state="invalid", reason="disabled by admin"),
    ]
    streaks = (0, rules.failure_threshold - 1, rules.failure_threshold)
    out = []
    for shape, streak, next_cd, day in itertools.product(
        shapes, streaks, (0.0, 8.0), (today, before, "")
    ):
        out.append(
            KeyRecord(
                key_id="",
                provider="p1",
                fail_streak=streak,
                next_cooldown_s=next_cd,
                day=day,
                requests_today=2,
                tokens_today=50,
                requests_total=7,
                tokens_total=900,
                **shape,
            )
        )
    return out


def variants(kind: EventKind, now: float) -> list[KeyEvent]:
    if kind == "rate_limited":
        return [KeyEvent("", "p1", kind, status=429, retry_after_s=w) for w in WAITS]
    if kind in ("quota_exhausted", "bucket_exhausted"):
        return [
            KeyEvent(
                "", "p1", kind, status=402, message=LONG, reset_at=None if r is None else now + r
            )
            for r in RESETS
        ]
    if kind in ("key_rejected", "server", "timeout"):
        return [KeyEvent("", "p1", kind, status=s) for s in (401, 503)]
    if kind == "success":
        return [KeyEvent("", "p1", kind, tokens=t) for t in (0, 120)]
    if kind in ("used", "unused"):  # one pick, or several coalesced (keys/sync.py)
        return [KeyEvent("", "p1", kind), KeyEvent("", "p1", kind, count=3)]
    return [KeyEvent("", "p1", kind)]


def same(got: KeyRecord, want: KeyRecord, context: object) -> None:
    if want.until is None or got.until is None:
        assert got.until == want.until, context
    else:
        assert got.until == pytest.approx(want.until, abs=TIME_SLACK_S), context
    assert dataclasses.replace(got, until=None) == dataclasses.replace(want, until=None), context


@pytest.fixture
async def keys_and_clock() -> AsyncIterator[tuple[Any, aioredis.Redis]]:
    module = backend_module("redis_db")
    require("redis")
    prefix = f"rgtest:{uuid.uuid4().hex[:12]}:"
    state = module.open_redis(REDIS_URL, prefix=prefix, timeout_s=5.0, fallback=MemoryAdmissions())
    raw = aioredis.Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
    try:
        yield state.keys, raw
    finally:
        await state.aclose()
        await raw.aclose()
        await _delete_prefix(prefix)


@pytest.mark.parametrize("rules", [RULES, TIGHT], ids=["default-rules", "tight-rules"])
@pytest.mark.parametrize("kind", KINDS)
async def test_each_row_of_spec_4_agrees(
    keys_and_clock: tuple[Any, aioredis.Redis], kind: EventKind, rules: Rules
) -> None:
    keys, raw = keys_and_clock
    before = await redis_now(raw)
    cases = []
    for i, (start, event) in enumerate(
        itertools.product(starts(before, rules), variants(kind, before))
    ):
        key_id = f"k{i}"
        cases.append((dataclasses.replace(start, key_id=key_id), event, key_id))
    await keys.save([start for start, _, _ in cases])
    now = await redis_now(raw)
    events = [dataclasses.replace(event, key_id=key_id) for _, event, key_id in cases]
    got = await keys.apply(events, rules)
    assert [r.key_id for r in got] == [key_id for _, _, key_id in cases]
    for (start, event, _), record in zip(cases, got, strict=True):
        want = apply(start, dataclasses.replace(event, key_id=start.key_id), now, rules)
        same(record, want, (start, event))
    stored = {r.key_id: r for r in await keys.load()}
    for record in got:
        assert stored[record.key_id] == record


async def test_a_key_never_seen_and_a_sequence_in_one_call(
    keys_and_clock: tuple[Any, aioredis.Redis],
) -> None:
    keys, raw = keys_and_clock
    now = await redis_now(raw)
    events = [
        KeyEvent("b", "p2", "used"),
        KeyEvent("a", "p1", "server", status=500),
        KeyEvent("b", "p2", "success", tokens=30),
        KeyEvent("a", "p1", "timeout"),
        KeyEvent("a", "p1", "server", status=502),
        KeyEvent("a", "p1", "server", status=502),
        KeyEvent("b", "p2", "rate_limited", status=429, retry_after_s=12.25),
        KeyEvent("c", "p1", "quota_exhausted", status=429, message="daily"),
        KeyEvent("d", "p1", "bucket_exhausted", reset_at=now + 700.5, message="proj (via c)"),
        KeyEvent("a", "p1", "bucket_exhausted", reset_at=now + 90.0, message="proj (via c)"),
        KeyEvent("d", "p1", "bucket_exhausted", reset_at=now + 30.0, message="proj (via c)"),
    ]
    got = await keys.apply(events, RULES)
    records = {k: KeyRecord(k, "p2" if k == "b" else "p1") for k in "bacd"}
    for event in events:
        records[event.key_id] = apply(records[event.key_id], event, now, RULES)
    assert [r.key_id for r in got] == ["b", "a", "c", "d"]
    assert records["d"].state == "exhausted"
    assert records["d"].reason == "quota exhausted: bucket proj (via c)"
    assert records["d"].until == now + 700.5
    for record in got:
        same(record, records[record.key_id], record.key_id)


# --- random sequences ----------------------------------------------------------------------------
_EVENTS = st.tuples(
    st.sampled_from(["k1", "k2", "k3"]),
    st.sampled_from(KINDS),
    st.integers(0, 5000),
    st.sampled_from([0, 401, 429, 500, 529]),
    st.sampled_from(WAITS),
    st.sampled_from(RESETS),
    st.text(max_size=130),
)
_RULES = st.builds(
    Rules,
    default_cooldown_s=st.sampled_from([1.0, 60.0, 0.5]),
    exhausted_default_s=st.sampled_from([30.0, 3600.0]),
    failure_threshold=st.integers(1, 4),
    failure_cooldown_s=st.sampled_from([1.0, 30.0]),
    failure_cooldown_max_s=st.sampled_from([2.0, 600.0]),
    cooling_cap_s=st.sampled_from([10.0, 3600.0]),
    exhausted_cap_s=st.sampled_from([100.0, 172800.0]),
)


async def _run_sequence(
    shapes: list[int],
    raw_events: list[tuple[Any, ...]],
    rules: Rules,
    split: int,
    coalesced: bool = False,
) -> None:
    """Python applies the events one by one; Redis gets them as they are, or coalesced as a
    replica sends them (keys/sync.py), which must come to the same records."""
    module = backend_module("redis_db")
    prefix = f"rgtest:{uuid.uuid4().hex[:12]}:"
    state = module.open_redis(REDIS_URL, prefix=prefix, timeout_s=5.0, fallback=MemoryAdmissions())
    raw = aioredis.Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
    try:
        now = await redis_now(raw)
        pool = starts(now, rules)
        records = {
            f"k{i + 1}": dataclasses.replace(pool[shape % len(pool)], key_id=f"k{i + 1}")
            for i, shape in enumerate(shapes)
        }
        await state.keys.save(list(records.values()))
        events = [
            KeyEvent(
                key, "p1", kind, tokens, status, wait, None if reset is None else now + reset, msg
            )
            for key, kind, tokens, status, wait, reset, msg in raw_events
        ]
        for part in (events[:split], events[split:]):
            if not part:
                continue
            now = await redis_now(raw)
            got = await state.keys.apply(coalesce(part) if coalesced else part, rules)
            order: list[str] = []
            for event in part:
                records[event.key_id] = apply(records[event.key_id], event, now, rules)
                if event.key_id not in order:
                    order.append(event.key_id)
            if coalesced:  # (a key's run is sent when it ends: the same keys, maybe reordered)
                assert sorted(r.key_id for r in got) == sorted(order)
            else:
                assert [r.key_id for r in got] == order
            for record in got:
                same(record, records[record.key_id], (record.key_id, part))
        stored = {r.key_id: r for r in await state.keys.load()}
        for key_id, record in records.items():
            same(stored[key_id], record, ("stored", key_id))
    finally:
        await state.aclose()
        await raw.aclose()
        await _delete_prefix(prefix)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shapes=st.lists(st.integers(0, 500), min_size=3, max_size=3),
    raw_events=st.lists(_EVENTS, min_size=1, max_size=14),
    rules=_RULES,
    split=st.integers(0, 14),
)
def test_random_sequences_agree(
    shapes: list[int], raw_events: list[tuple[Any, ...]], rules: Rules, split: int
) -> None:
    require("redis")
    asyncio.run(asyncio.wait_for(_run_sequence(shapes, raw_events, rules, split), 30))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shapes=st.lists(st.integers(0, 500), min_size=3, max_size=3),
    raw_events=st.lists(_EVENTS, min_size=1, max_size=20),
    rules=_RULES,
    split=st.integers(0, 20),
)
def test_coalesced_sequences_agree_with_each_event_applied(
    shapes: list[int], raw_events: list[tuple[Any, ...]], rules: Rules, split: int
) -> None:
    require("redis")
    run = _run_sequence(shapes, raw_events, rules, split, coalesced=True)
    asyncio.run(asyncio.wait_for(run, 30))
