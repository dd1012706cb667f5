"""The typed records that cross the state seam: clients, upstream key states and events, ledger
rows and the aggregates read back from them, admissions. Plain data: no behaviour, no I/O, no
domain classes, so every backend (memory, SQLite, Postgres, Redis) speaks the same types."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

KeyStateName = Literal["ready", "cooling", "exhausted", "invalid"]
EventKind = Literal[
    "used",  # the key was picked (requests +1, tokens as estimated); no state change
    "unused",  # a pick taken back: nothing was sent with it
    "success",  # tokens counted, the failure streak cleared
    "rate_limited",
    "quota_exhausted",
    "bucket_exhausted",  # another key of its quota bucket was exhausted: parked as long
    "key_rejected",
    "server",
    "timeout",
    "enable",  # by an admin or `upstream check`: ready, streak cleared
    "disable",  # by an admin: invalid until enabled
]
RefusedBy = Literal["requests", "tokens", "budget"]
SpendGroup = Literal["model", "provider", "client"]
UsageGroup = Literal["client", "provider", "model", "key", "day"]


class StateUnavailable(Exception):
    """A backend could not do what was asked (database or Redis away, locked, timed out). The
    message names the backend and the driver's error class, never a URL or a credential."""


# --- clients -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ClientRecord:
    """An issued client key: only its SHA-256 hash is ever stored."""

    id: str
    name: str
    key_hash: str = field(repr=False)
    key_hint: str
    created_at: float
    rpm: int | None = None
    tpm: int | None = None
    monthly_budget_usd: float | None = None
    models: tuple[str, ...] | None = None
    revoked_at: float | None = None


@dataclass(frozen=True, slots=True)
class ClientChanges:
    """What an update changes: only the fields named in `fields` (so None can mean 'no limit')."""

    fields: frozenset[str]
    name: str | None = None
    rpm: int | None = None
    tpm: int | None = None
    monthly_budget_usd: float | None = None
    models: tuple[str, ...] | None = None

    ALLOWED = frozenset({"name", "rpm", "tpm", "monthly_budget_usd", "models"})


# --- upstream keys -----------------------------------------------------------------------------
@dataclass(slots=True)
class KeyRecord:
    """One upstream key's state and usage, named by its key id (never the key)."""

    key_id: str
    provider: str
    state: KeyStateName = "ready"
    until: float | None = None
    reason: str | None = None
    fail_streak: int = 0
    next_cooldown_s: float = 0.0
    day: str = ""
    requests_today: int = 0
    tokens_today: int = 0
    requests_total: int = 0
    tokens_total: int = 0


@dataclass(frozen=True, slots=True)
class KeyEvent:
    """Something that happened to a key, applied by the transition rules (keys/policy.py, and
    the Redis script that mirrors them). `tokens` is the usage counted with a `used` or
    `success` event; `retry_after_s` / `reset_at` are the provider's word for a cooldown."""

    key_id: str
    provider: str
    kind: EventKind
    tokens: int = 0
    status: int = 0
    retry_after_s: float | None = None
    reset_at: float | None = None
    message: str = ""
    count: int = 1  # `used` / `unused`: that many picks at once (coalesced by keys/sync.py)


@dataclass(frozen=True, slots=True)
class Rules:
    """The numbers the transition rules need (from the config's `retries:`)."""

    default_cooldown_s: float = 60.0
    exhausted_default_s: float = 3600.0
    failure_threshold: int = 3
    failure_cooldown_s: float = 30.0
    failure_cooldown_max_s: float = 600.0
    cooling_cap_s: float = 3600.0
    exhausted_cap_s: float = 48 * 3600.0


# --- admissions --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AdmitRequest:
    """One request's claim on its client's rate windows and budget, decided in one call."""

    client_id: str
    rpm: int | None
    tpm: int | None
    tokens: int  # estimated prompt + output tokens
    budget_usd: float | None
    cost_usd: float  # the worst case, reserved until settled


@dataclass(slots=True)
class Admission:
    """What an admission decided, with the numbers the answer's headers and messages need.
    `ticket` is the backend's handle for settle/release; opaque to callers."""

    allowed: bool
    refused: RefusedBy | None = None
    rpm: int | None = None
    remaining_requests: int = 0
    reset_requests_s: float = 0.0
    tpm: int | None = None
    remaining_tokens: int = 0
    retry_after_s: float = 0.0  # when refused by a rate window
    budget_usd: float | None = None
    budget_left_usd: float = 0.0  # when refused by the budget: what was left
    month: str = ""
    tokens: int = 0
    cost_usd: float = 0.0
    ticket: str = ""
    settled: bool = False


# --- the ledger --------------------------------------------------------------------------------
@dataclass(slots=True)
class LedgerRecord:
    """One proxied request (SPEC §9)."""

    id: str
    ts: float
    client: str | None  # the client's display name at the time
    route: str
    provider: str | None
    model: str | None
    key_id: str | None
    status: int
    error_code: str | None
    latency_ms: int
    ttft_ms: int | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    cache: str = "bypass"
    stream: bool = False
    attempts: int = 0
    estimated: bool = False
    client_id: str | None = None  # what limits, budgets and reports are keyed by

    @property
    def day(self) -> str:
        return utc_day(self.ts)


def utc_day(ts: float) -> str:
    """The UTC date of a time stamp, computed once per day."""
    return _day_label(int(ts // 86400))


@lru_cache(maxsize=16)
def _day_label(day_number: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day_number * 86400))


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One group of a usage report. `client_id` is set when grouped by client (`name` is then
    the latest name the client had)."""

    name: str | None
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_usd: float
    latency_ms_sum: int
    client_id: str | None = None


@dataclass(frozen=True, slots=True)
class FailureRow:
    id: str
    ts: float
    client: str | None
    route: str
    provider: str | None
    model: str | None
    key_id: str | None
    status: int
    error_code: str | None
    latency_ms: int
    attempts: int


@dataclass(frozen=True, slots=True)
class MinuteRow:
    minute: int  # minutes since the epoch
    requests: int
    errors: int
    tokens: int
    cost_usd: float


@dataclass(frozen=True, slots=True)
class DayRow:
    day: str
    requests: int
    errors: int
    tokens: int
    cost_usd: float


@dataclass(frozen=True, slots=True)
class SpendRow:
    name: str | None
    requests: int
    errors: int
    tokens: int
    cost_usd: float


@dataclass(frozen=True, slots=True)
class LatencySample:
    ts: float
    provider: str | None
    latency_ms: int
    ttft_ms: int | None


@dataclass(frozen=True, slots=True)
class ErrorCount:
    status: int
    error_code: str | None
    provider: str | None
    count: int
