"""The key-state transition rules of SPEC §4 as one pure function: a key's record, an event and
the time in, the next record out. The pool applies it in memory; the Redis backend runs a Lua
script that mirrors it line by line (tests/state/test_policy_mirror.py proves they agree)."""

from __future__ import annotations

import math
from dataclasses import replace

from relaygate.config.model import RetryConfig
from relaygate.state.records import KeyEvent, KeyRecord, Rules, utc_day


def wait(value: float | None, default: float, cap: float) -> float:
    """A cooldown from an upstream's word: the default unless finite and positive, then capped."""
    if value is None or not math.isfinite(value) or value <= 0:
        value = default
    return min(value, cap)


def refresh(record: KeyRecord, now: float) -> KeyRecord:
    """A new day clears the day's counts; a cooldown or quota wait that has ended makes the key
    ready. Returns the same object when nothing changed."""
    day = utc_day(now)
    out = record
    if out.day != day:
        out = replace(out, day=day, requests_today=0, tokens_today=0)
    if out.state in ("cooling", "exhausted") and out.until is not None and out.until <= now:
        out = replace(out, state="ready", until=None, reason=None)
    return out


def apply(record: KeyRecord, event: KeyEvent, now: float, rules: Rules) -> KeyRecord:
    """The record after `event` at `now` (a new object; `record` is left as it was)."""
    r = replace(refresh(record, now))
    kind = event.kind
    if kind == "used":
        r.requests_today += event.count
        r.requests_total += event.count
    elif kind == "unused":
        r.requests_today = max(0, r.requests_today - event.count)
        r.requests_total = max(0, r.requests_total - event.count)
    elif kind == "success":
        r.tokens_today += event.tokens
        r.tokens_total += event.tokens
        r.fail_streak, r.next_cooldown_s = 0, 0.0
    elif kind == "rate_limited":
        cooldown = wait(event.retry_after_s, rules.default_cooldown_s, rules.cooling_cap_s)
        r.state, r.until, r.reason = "cooling", now + cooldown, f"rate limited ({event.status})"
    elif kind == "quota_exhausted":
        reset_in = None if event.reset_at is None else event.reset_at - now
        spent = wait(reset_in, rules.exhausted_default_s, rules.exhausted_cap_s)
        r.state, r.until = "exhausted", now + spent
        r.reason = f"quota exhausted: {event.message[:120]}"
    elif kind == "bucket_exhausted":  # its bucket's quota: no count, streak or invalid state
        reset_in = None if event.reset_at is None else event.reset_at - now
        until = now + wait(reset_in, rules.exhausted_default_s, rules.exhausted_cap_s)
        if r.state != "invalid" and not (
            r.state == "exhausted" and r.until is not None and r.until >= until
        ):
            r.state, r.until = "exhausted", until
            r.reason = f"quota exhausted: bucket {event.message[:120]}"
    elif kind == "key_rejected":
        r.state, r.until = "invalid", None
        r.reason = f"rejected by the provider ({event.status})"
    elif kind in ("server", "timeout"):
        r.fail_streak += 1
        if r.fail_streak >= rules.failure_threshold:
            cooldown = r.next_cooldown_s or rules.failure_cooldown_s
            r.state, r.until = "cooling", now + cooldown
            r.reason = f"{r.fail_streak} failures in a row"
            r.fail_streak = 0
            r.next_cooldown_s = min(cooldown * 2, rules.failure_cooldown_max_s)
    elif kind == "enable":
        r.state, r.until, r.reason, r.fail_streak, r.next_cooldown_s = "ready", None, None, 0, 0.0
    elif kind == "disable":
        r.state, r.until, r.reason = "invalid", None, "disabled by admin"
    return r


def rules_from(retry: RetryConfig) -> Rules:
    """The transition numbers of the config's `retries:` section."""
    return Rules(
        default_cooldown_s=retry.default_cooldown_s,
        exhausted_default_s=retry.exhausted_default_s,
        failure_threshold=retry.failure_threshold,
        failure_cooldown_s=retry.failure_cooldown_s,
        failure_cooldown_max_s=retry.failure_cooldown_max_s,
    )
