"""One pool per provider (its keys: keys/key_state.py): selection (round robin / least used),
proactive per-key limits, and the key states of SPEC §4 (ready, cooling, exhausted, invalid)
driven by classified failures through the transition rules of keys/policy.py; a quota-exhausted
key parks its bucket. Selection is in memory; with a shared store (Redis) the pool also queues
what happened as KeyEvents and merges the shared records back (keys/sync.py)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from relaygate.config.model import KeyLimits, KeySpec, RetryConfig
from relaygate.keys import policy
from relaygate.keys.key_state import KeyState, key_id
from relaygate.state.records import EventKind, KeyEvent, KeyRecord, utc_day
from relaygate.types import Failure, Usage

__all__ = ["KeyPool", "KeyState", "Lease", "key_id"]  # KeyState, key_id: keys/key_state.py

log = logging.getLogger("relaygate.keys")

MAX_EVENTS = 100_000  # queued for the shared store between two syncs (a sync runs every 0.25 s)


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

    @property
    def proxy(self) -> str | None:
        """The key's own egress proxy, else None (the provider's or the environment's)."""
        return self.key.proxy

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
        self.keys = [
            KeyState(key_id(provider, s.key, s.label), provider, s.key, s.bucket, s.proxy)
            for s in specs
        ]
        if not self.keys and not needs_key:
            self.keys = [KeyState(key_id(provider, None), provider, None)]
        self.paused_until = 0.0
        self._cursor = 0
        self._windowed = self.limits.rpm is not None or self.limits.tpm is not None
        self.rules = policy.rules_from(self.retry)
        self.dirty: set[KeyState] = set()
        self.events: list[KeyEvent] | None = None  # a list when a shared store is in use
        self.pause_out: float | None = None  # a provider pause not yet sent to it

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
        if self.events is not None:
            chosen.pend_requests += 1
            self._event(chosen, "used")
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
    def _event(self, key: KeyState, kind: EventKind, **detail: Any) -> KeyEvent:
        event = KeyEvent(key.key_id, self.provider, kind, **detail)
        if self.events is not None and len(self.events) < MAX_EVENTS:
            self.events.append(event)
        return event

    def _apply(self, key: KeyState, event: KeyEvent) -> None:
        """A state change by the transition rules (the shared store applies the same event)."""
        key.load(policy.apply(key.record(), event, self.clock(), self.rules))
        key.pend_state = self.events is not None
        self.dirty.add(key)

    def on_unused(self, key: KeyState) -> None:
        key.requests_today = max(0, key.requests_today - 1)
        key.requests_total = max(0, key.requests_total - 1)
        if key.window:
            key.window.pop()
        if self.events is not None:
            key.pend_requests -= 1
            self._event(key, "unused")

    def on_success(self, key: KeyState, usage: Usage | None) -> None:
        """The rules' `success`, inline: it runs once per request."""
        tokens = usage.total_tokens if usage else 0
        key.tokens_today += tokens
        key.tokens_total += tokens
        if key.window and tokens:
            t, _ = key.window[-1]
            key.window[-1] = (t, tokens)
        if key.fail_streak or key.next_cooldown_s:
            key.fail_streak, key.next_cooldown_s = 0, 0.0
            key.pend_state = self.events is not None
        self.dirty.add(key)
        if self.events is not None:
            key.pend_tokens += tokens
            self._event(key, "success", tokens=tokens)

    def on_failure(self, key: KeyState, failure: Failure) -> None:
        kind = failure.kind
        if kind not in ("rate_limited", "quota_exhausted", "key_rejected", "server", "timeout"):
            return  # the request's own fault: the key is unchanged
        if kind == "key_rejected" and key.state != "invalid":
            log.warning("upstream key %s rejected by the provider (%s)", key.key_id, failure.status)
        event = self._event(
            key,
            kind,
            status=failure.status or 0,
            retry_after_s=failure.retry_after_s,
            reset_at=failure.reset_at,
            message=failure.message[:120],
        )
        self._apply(key, event)
        if kind == "quota_exhausted" and key.bucket is not None:
            self._park_bucket(key)
        if kind == "rate_limited":
            key.last_429_at = self.clock()
            self._check_pool_throttle(
                key.last_429_at, (key.until or key.last_429_at) - key.last_429_at
            )

    def _park_bucket(self, spent: KeyState) -> None:
        """The quota of `spent`'s bucket is gone: every other key of it waits as long (SPEC 11a:
        some providers count a quota per project, not per key)."""
        message = f"{spent.bucket} (via {spent.key_id})"
        for key in self.keys:
            if key is not spent and key.bucket == spent.bucket:
                event = self._event(key, "bucket_exhausted", reset_at=spent.until, message=message)
                self._apply(key, event)

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
                    k.state, k.until, k.reason = "ready", None, None
                    self._event(k, "enable")
                    k.pend_state = self.events is not None
                    self.dirty.add(k)
                k.last_429_at = 0.0
            if self.events is not None:
                self.pause_out = self.paused_until
            pause = self.paused_until - now
            log.warning(
                "provider %s: every key rate limited; pausing it %.0f s", self.provider, pause
            )

    # --- admin and persistence ------------------------------------------------------------------
    def find(self, kid: str) -> KeyState | None:
        return next((k for k in self.keys if k.key_id == kid), None)

    def enable(self, key: KeyState) -> None:
        self._apply(key, self._event(key, "enable"))

    def disable(self, key: KeyState) -> None:
        self._apply(key, self._event(key, "disable"))

    def restore(self, records: Iterable[KeyRecord]) -> None:
        """States saved by an earlier run; a saved `until` past today's caps (written by a build
        without them) is brought back within them."""
        self.merge(records, {})
        now = self.clock()
        for key in self.keys:
            if key.state in ("cooling", "exhausted"):
                cap = (
                    self.rules.cooling_cap_s
                    if key.state == "cooling"
                    else self.rules.exhausted_cap_s
                )
                until = key.until
                if until is None or not math.isfinite(until) or until > now + cap:
                    key.until = now + cap
                    self.dirty.add(key)

    def merge(self, records: Iterable[KeyRecord], pauses: Mapping[str, float]) -> None:
        """The shared store's records: its state wins unless this pool changed the key's state
        since the last sync; its counts plus the uses and tokens not yet sent."""
        by_id = {k.key_id: k for k in self.keys}
        today = utc_day(self.clock())
        for rec in records:
            key = by_id.get(rec.key_id)
            if key is None:
                continue
            if not key.pend_state:
                key.state, key.until, key.reason = rec.state, rec.until, rec.reason
                key.fail_streak, key.next_cooldown_s = rec.fail_streak, rec.next_cooldown_s
            same_day = rec.day == today
            key.day = today if same_day or key.day == today else rec.day
            key.requests_today = (rec.requests_today if same_day else 0) + key.pend_requests
            key.tokens_today = (rec.tokens_today if same_day else 0) + key.pend_tokens
            key.requests_total = rec.requests_total + key.pend_requests
            key.tokens_total = rec.tokens_total + key.pend_tokens
        until = pauses.get(self.provider)
        if until is not None and until > self.paused_until:
            self.paused_until = until

    def take_events(self) -> tuple[list[KeyEvent], float | None]:
        """What happened since the last sync (the pending marks start again from here)."""
        events, self.events = self.events or [], []
        pause, self.pause_out = self.pause_out, None
        for key in self.keys:
            key.pend_requests = key.pend_tokens = 0
            key.pend_state = False
        return events, pause

    def mark_dirty(self, key_ids: Iterable[str]) -> None:
        """States whose write failed: written with the next flush."""
        for kid in key_ids:
            key = self.find(kid)
            if key is not None:
                self.dirty.add(key)

    def take_dirty(self) -> list[KeyRecord]:
        rows = [k.record() for k in self.dirty]
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
