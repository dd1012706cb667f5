"""One upstream key as its pool holds it (KeyState: the key, its quota bucket and proxy, its
state and counts, what is pending for a shared store) and its key id (SPEC §4)."""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from relaygate.state.records import KeyRecord, KeyStateName

State = KeyStateName
NO_KEY = "nokey"


def key_id(provider: str, key: str | None, label: str | None = None) -> str:
    """`<provider>:<first 8 hex of sha256(key)>`, or the configured label."""
    if label:
        return label
    if not key:
        return f"{provider}:{NO_KEY}"
    return f"{provider}:{hashlib.sha256(key.encode()).hexdigest()[:8]}"


@dataclass(eq=False)
class KeyState:
    key_id: str
    provider: str
    secret: str | None = field(default=None, repr=False)
    bucket: str | None = None  # keys of one quota bucket are exhausted together
    proxy: str | None = field(default=None, repr=False)  # its own egress proxy (a secret)
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
    # since the last sync with a shared store: uses and tokens not yet sent, a state change
    pend_requests: int = 0
    pend_tokens: int = 0
    pend_state: bool = False

    def public(self, now: float) -> dict[str, Any]:
        """The state as anyone may see it: key id only, never the key."""
        return {
            "key_id": self.key_id,
            "provider": self.provider,
            "bucket": self.bucket,
            "state": self.state,
            "until": self.until,
            "retry_in_s": round(max(0.0, self.until - now), 1) if self.until else None,
            "reason": self.reason,
            "requests_today": self.requests_today,
            "tokens_today": self.tokens_today,
            "requests_total": self.requests_total,
            "tokens_total": self.tokens_total,
        }

    def record(self) -> KeyRecord:
        return KeyRecord(
            self.key_id,
            self.provider,
            self.state,
            self.until,
            self.reason,
            self.fail_streak,
            self.next_cooldown_s,
            self.day,
            self.requests_today,
            self.tokens_today,
            self.requests_total,
            self.tokens_total,
        )

    def load(self, rec: KeyRecord) -> None:
        self.state, self.until, self.reason = rec.state, rec.until, rec.reason
        self.fail_streak, self.next_cooldown_s = rec.fail_streak, rec.next_cooldown_s
        self.day, self.requests_today, self.tokens_today = (
            rec.day,
            rec.requests_today,
            rec.tokens_today,
        )
        self.requests_total, self.tokens_total = rec.requests_total, rec.tokens_total
