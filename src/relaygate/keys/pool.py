"""One pool per provider: selection (round robin / least used), proactive per-key limits, and the
key states of SPEC §4 (ready, cooling, exhausted, invalid) driven by classified failures."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from relaygate.config.model import KeyLimits, KeySpec, RetryConfig
from relaygate.types import Failure, Usage

log = logging.getLogger("relaygate.keys")

State = Literal["ready", "cooling", "exhausted", "invalid"]
NO_KEY = "nokey"
COOLING_CAP_S = 3600.0  # SPEC §8a: no upstream answer parks a key for longer than this...
EXHAUSTED_CAP_S = 48 * 3600.0  # ...or, for a spent quota, than this


def _wait(value: float | None, default: float, cap: float) -> float:
    """A cooldown from an upstream's word: the default unless finite and positive, then capped."""
    if value is None or not math.isfinite(value) or value <= 0:
        value = default
    return min(value, cap)


def key_id(provider: str, key: str | None, label: str | None = None) -> str:
    """`<provider>:<first 8 hex of sha256(key)>`, or the configured label."""
    if label:
        return label
    if not key:
        return f"{provider}:{NO_KEY}"
    return f"{provider}:{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def utc_day(now: float) -> str:
    """The UTC date of `now` (asked on every key selection, so computed once per day)."""
    return _day_label(int(now // 86400))


@lru_cache(maxsize=8)
def _day_label(day_number: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day_number * 86400))


@dataclass(eq=False)
class KeyState:
    key_id: str
    provider: str
    secret: str | None = field(default=None, repr=False)
    state: State = "ready"
    until: float | None = None
    reason: str | None = None
    fail_streak: int = 0
    next_cooldown_s: float = 0.0
    day: str = ""
    requests_today: int = 0
    tokens_today: int = 0
    requests_total: int = 0
    tokens_total: int = 0
    last_429_at: float = 0.0
    window: deque[tuple[float, int]] = field(default_factory=deque, repr=False)

    def public(self, now: float) -> dict[str, Any]:
        """The state as anyone may see it: key id only, never the key."""
        return {
            "key_id": self.key_id,
            "provider": self.provider,
            "state": self.state,
            "until": self.until,
            "retry_in_s": round(max(0.0, self.until - now), 1) if self.until else None,
            "reason": self.reason,
            "requests_today": self.requests_today,
            "tokens_today": self.tokens_today,
            "requests_total": self.requests_total,
            "tokens_total": self.tokens_total,
        }

    PERSISTED = (
        "state",
        "until",
        "reason",
        "fail_streak",
        "next_cooldown_s",
        "day",
        "requests_today",
        "tokens_today",
        "requests_total",
        "tokens_total",
    )

    def to_row(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "provider": self.provider,
            **{name: getattr(self, name) for name in self.PERSISTED},
        }

    def restore(self, row: dict[str, Any]) -> None:
        for name in self.PERSISTED:
            if name in row and row[name] is not None:
                setattr(self, name, row[name])


class Lease:
    """One use of one key; the attempt loop reports how it went."""

    __slots__ = ("_pool", "key")

    def __init__(self, pool: KeyPool, key: KeyState) -> None:
        self._pool = pool
        self.key = key

    @property
    def key_id(self) -> str:
        return self.key.key_id

    @property
    def secret(self) -> str | None:
        return self.key.secret

    def succeeded(self, usage: Usage | None) -> None:
        self._pool.on_success(self.key, usage)

    def failed(self, failure: Failure) -> None:
        self._pool.on_failure(self.key, failure)

    def unused(self) -> None:
        """Nothing was sent with this key after all: take the request back from its counts."""
        self._pool.on_unused(self.key)


class KeyPool:
    def __init__(
        self,
        provider: str,
        specs: Sequence[KeySpec],
        *,
        needs_key: bool = True,
        strategy: str = "least_used",
        limits: KeyLimits | None = None,
        retry: RetryConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.provider = provider
        self.strategy = strategy
        self.limits = limits or KeyLimits()
        self.retry = retry or RetryConfig()
        self.clock = clock
        self.keys = [KeyState(key_id(provider, s.key, s.label), provider, s.key) for s in specs]
        if not self.keys and not needs_key:
            self.keys = [KeyState(key_id(provider, None), provider, None)]
        self.paused_until = 0.0
        self._cursor = 0
        self._windowed = self.limits.rpm is not None or self.limits.tpm is not None
        self.dirty: set[KeyState] = set()

    # --- selection ------------------------------------------------------------------------------
    def acquire(self, est_tokens: int = 0) -> Lease | None:
        now = self.clock()
        if now < self.paused_until:
            return None
        keys, n = self.keys, len(self.keys)
        least_used = self.strategy == "least_used"
        chosen: KeyState | None = None
        at = 0
        for i in range(self._cursor, self._cursor + n):  # every key is refreshed, in turn order
            key = keys[i % n]
            if self._usable(key, now, est_tokens) and (
                chosen is None or (least_used and key.requests_today < chosen.requests_today)
            ):  # least_used: the first of the least used keeps round-robin ties
                chosen, at = key, i % n
        if chosen is None:
            return None
        self._cursor = (at + 1) % n
        chosen.requests_today += 1
        chosen.requests_total += 1
        if self._windowed:  # the 60 s window is kept only for per-key rpm / tpm limits
            chosen.window.append((now, est_tokens))
        self.dirty.add(chosen)
        return Lease(self, chosen)

    def _usable(self, key: KeyState, now: float, est_tokens: int) -> bool:
        self._refresh(key, now)
        if key.state != "ready":
            return False
        lim = self.limits
        if lim.rpd is not None and key.requests_today >= lim.rpd:
            return False
        if lim.rpm is None and lim.tpm is None:
            return True
        while key.window and key.window[0][0] <= now - 60:
            key.window.popleft()
        if lim.rpm is not None and len(key.window) >= lim.rpm:
            return False
        return lim.tpm is None or sum(t for _, t in key.window) + est_tokens <= lim.tpm

    def _refresh(self, key: KeyState, now: float) -> None:
        day = utc_day(now)
        if key.day != day:
            key.day, key.requests_today, key.tokens_today = day, 0, 0
            self.dirty.add(key)
        if key.state in ("cooling", "exhausted") and key.until is not None and key.until <= now:
            key.state, key.until, key.reason = "ready", None, None
            self.dirty.add(key)

    def next_ready_in(self) -> float | None:
        """Seconds until some key can serve again, or None when none will without an admin."""
        now = self.clock()
        if now < self.paused_until:
            return self.paused_until - now
        waits: list[float] = []
        for key in self.keys:
            self._refresh(key, now)
            if key.state == "ready":
                waits.append(self._limit_wait(key, now))
            elif key.state != "invalid" and key.until is not None:
                waits.append(key.until - now)
        return max(0.0, min(waits)) if waits else None

    def _limit_wait(self, key: KeyState, now: float) -> float:
        if self.limits.rpd is not None and key.requests_today >= self.limits.rpd:
            tomorrow = (int(now) // 86400 + 1) * 86400
            return tomorrow - now
        return max(0.0, key.window[0][0] + 60 - now) if key.window else 0.0

    # --- outcomes -------------------------------------------------------------------------------
    def on_unused(self, key: KeyState) -> None:
        key.requests_today = max(0, key.requests_today - 1)
        key.requests_total = max(0, key.requests_total - 1)
        if key.window:
            key.window.pop()

    def on_success(self, key: KeyState, usage: Usage | None) -> None:
        tokens = usage.total_tokens if usage else 0
        key.tokens_today += tokens
        key.tokens_total += tokens
        if key.window and tokens:
            t, _ = key.window[-1]
            key.window[-1] = (t, tokens)
        if key.fail_streak or key.next_cooldown_s:
            key.fail_streak, key.next_cooldown_s = 0, 0.0
        self.dirty.add(key)

    def on_failure(self, key: KeyState, failure: Failure) -> None:
        now = self.clock()
        kind = failure.kind
        if kind == "rate_limited":
            wait = _wait(failure.retry_after_s, self.retry.default_cooldown_s, COOLING_CAP_S)
            key.last_429_at = now
            self._set(key, "cooling", now + wait, f"rate limited ({failure.status})")
            self._check_pool_throttle(now, wait)
        elif kind == "quota_exhausted":
            reset_in = None if failure.reset_at is None else failure.reset_at - now
            wait = _wait(reset_in, self.retry.exhausted_default_s, EXHAUSTED_CAP_S)
            self._set(key, "exhausted", now + wait, f"quota exhausted: {failure.message[:120]}")
        elif kind == "key_rejected":
            if key.state != "invalid":
                log.warning(
                    "upstream key %s rejected by the provider (%s)", key.key_id, failure.status
                )
            self._set(key, "invalid", None, f"rejected by the provider ({failure.status})")
        elif kind in ("server", "timeout"):
            key.fail_streak += 1
            if key.fail_streak >= self.retry.failure_threshold:
                cooldown = key.next_cooldown_s or self.retry.failure_cooldown_s
                self._set(key, "cooling", now + cooldown, f"{key.fail_streak} failures in a row")
                key.fail_streak = 0
                key.next_cooldown_s = min(cooldown * 2, self.retry.failure_cooldown_max_s)
        self.dirty.add(key)

    def _set(self, key: KeyState, state: State, until: float | None, reason: str) -> None:
        key.state, key.until, key.reason = state, until, reason

    def _check_pool_throttle(self, now: float, wait: float) -> None:
        """Every live key 429'd within the window: probably an IP- or org-wide throttle. Pause the
        provider as a whole and leave the keys' own records clean."""
        live = [k for k in self.keys if k.state != "invalid" and k.state != "exhausted"]
        if len(live) < 2:
            return
        window = self.retry.pool_throttle_window_s
        if all(now - k.last_429_at <= window for k in live):
            longest = max((k.until or 0.0) for k in live if k.state == "cooling")
            self.paused_until = max(self.paused_until, now + wait, longest)
            for k in live:
                if k.state == "cooling" and (k.reason or "").startswith("rate limited"):
                    self._set(k, "ready", None, "")
                    k.reason = None
                k.last_429_at = 0.0
            pause = self.paused_until - now
            log.warning(
                "provider %s: every key rate limited; pausing it %.0f s", self.provider, pause
            )

    # --- admin and persistence ------------------------------------------------------------------
    def find(self, kid: str) -> KeyState | None:
        return next((k for k in self.keys if k.key_id == kid), None)

    def enable(self, key: KeyState) -> None:
        self._set(key, "ready", None, "")
        key.reason, key.fail_streak, key.next_cooldown_s = None, 0, 0.0
        self.dirty.add(key)

    def disable(self, key: KeyState) -> None:
        self._set(key, "invalid", None, "disabled by admin")
        self.dirty.add(key)

    def restore(self, rows: Iterable[dict[str, Any]]) -> None:
        """States saved by an earlier run; a saved `until` past today's caps (written by a build
        without them) is brought back within them."""
        by_id = {k.key_id: k for k in self.keys}
        now = self.clock()
        for row in rows:
            key = by_id.get(row["key_id"])
            if key is None:
                continue
            key.restore(row)
            if key.state in ("cooling", "exhausted"):
                cap = COOLING_CAP_S if key.state == "cooling" else EXHAUSTED_CAP_S
                until = key.until
                if until is None or not math.isfinite(until) or until > now + cap:
                    key.until = now + cap
                    self.dirty.add(key)

    def mark_dirty(self, key_ids: Iterable[str]) -> None:
        """States whose write failed: written with the next flush."""
        for kid in key_ids:
            key = self.find(kid)
            if key is not None:
                self.dirty.add(key)

    def take_dirty(self) -> list[dict[str, Any]]:
        rows = [k.to_row() for k in self.dirty]
        self.dirty.clear()
        return rows

    def states(self) -> list[dict[str, Any]]:
        now = self.clock()
        for key in self.keys:
            self._refresh(key, now)
        out = [k.public(now) for k in self.keys]
        if now < self.paused_until:
            for item in out:
                item["pool_paused_for_s"] = round(self.paused_until - now, 1)
        return out
