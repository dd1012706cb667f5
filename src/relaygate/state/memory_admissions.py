"""Admissions in one process's memory: the client rate windows (60 s sliding: requests as time
stamps, tokens in one-second buckets with a running total) and the monthly budgets (the worst
case reserved, settled with the real cost), decided by one `admit` with no await between the
checks and what it takes, so it is atomic in one event loop. The default backend, and the
fallback the Redis backend answers with while Redis is away.

Owns: the windows, the accounts (one per client, of the month it last admitted in) and the
outstanding admissions (by ticket, until settled or released)."""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from functools import lru_cache

from relaygate.state.records import Admission, AdmitRequest, RefusedBy

WINDOW_S = 60.0
EPSILON_USD = 1e-12  # float sums of reservations may land a hair above an exact budget


def utc_month(ts: float) -> str:
    """'YYYY-MM' of a time stamp (UTC), computed once per day."""
    return _month_label(int(ts // 86400))


@lru_cache(maxsize=16)
def _month_label(day_number: int) -> str:
    return time.strftime("%Y-%m", time.gmtime(day_number * 86400))


class _Window:
    """One client's last 60 s: request time stamps (only admitted ones, so at most `rpm`) and
    token buckets `[second, tokens, alive]` with their running total, so admission is O(1)."""

    __slots__ = ("requests", "token_total", "tokens")

    def __init__(self) -> None:
        self.requests: deque[float] = deque()
        self.tokens: deque[list[float]] = deque()
        self.token_total = 0.0

    def trim(self, now: float) -> None:
        edge = now - WINDOW_S
        requests = self.requests
        while requests and requests[0] <= edge:
            requests.popleft()
        tokens = self.tokens
        while tokens and tokens[0][0] + 1 <= edge:
            bucket = tokens.popleft()
            self.token_total -= bucket[1]
            bucket[2] = 0.0  # a settlement arriving later leaves the total alone
        if not tokens:
            self.token_total = 0.0  # no drift from float sums

    def add_tokens(self, now: float, amount: float) -> list[float]:
        second = float(int(now))
        if self.tokens and self.tokens[-1][0] == second:
            bucket = self.tokens[-1]
            bucket[1] += amount
        else:
            bucket = [second, amount, 1.0]
            self.tokens.append(bucket)
        self.token_total += amount
        return bucket


class _Account:
    __slots__ = ("month", "reserved", "spent")

    def __init__(self, month: str, spent: float = 0.0) -> None:
        self.month = month
        self.spent = spent
        self.reserved = 0.0


class _Hold:
    """What an admission took: its request slot, its token bucket and its reservation."""

    __slots__ = ("account", "amount", "at", "bucket", "tokens", "window")

    def __init__(self, window: _Window | None, at: float | None) -> None:
        self.window = window
        self.at = at
        self.bucket: list[float] | None = None
        self.tokens = 0.0
        self.account: _Account | None = None
        self.amount = 0.0


class MemoryAdmissions:
    """Admissions of one process. An admission that is neither settled nor released keeps its
    reservation (and its ticket here) for good: callers settle or release every one."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._windows: dict[str, _Window] = {}
        self._accounts: dict[str, _Account] = {}
        self._holds: dict[str, _Hold] = {}
        self._ids = itertools.count(1)

    async def admit(self, request: AdmitRequest) -> Admission:
        # No await below: the checks and what is taken happen in one step of the event loop.
        now = self.clock()
        client_id = request.client_id
        rpm, tpm, budget = request.rpm, request.tpm, request.budget_usd
        tokens = request.tokens
        adm = Admission(
            True, rpm=rpm, tpm=tpm, budget_usd=budget, month=utc_month(now), tokens=tokens
        )
        window: _Window | None = None
        if rpm is not None or tpm is not None:
            window = self._windows.get(client_id)
            if window is None:
                window = self._windows[client_id] = _Window()
            window.trim(now)
            if rpm is not None:
                count = len(window.requests)
                reset = window.requests[0] + WINDOW_S - now if count else WINDOW_S
                adm.reset_requests_s = reset
                adm.remaining_requests = max(0, rpm - count - 1)
                if count >= rpm:
                    return _refused(adm, "requests", reset)
            if tpm is not None:
                used = window.token_total
                adm.remaining_tokens = max(0, int(tpm - used - tokens))
                if window.tokens and used + tokens > tpm:
                    return _refused(adm, "tokens", window.tokens[0][0] + 1 + WINDOW_S - now)
        account: _Account | None = None
        if budget is not None:
            account = self._accounts.get(client_id)
            if account is None or account.month != adm.month:
                account = self._accounts[client_id] = _Account(adm.month)
            cost = request.cost_usd
            if account.spent + account.reserved + cost > budget + EPSILON_USD:
                adm.allowed, adm.refused = False, "budget"
                adm.budget_left_usd = max(0.0, budget - account.spent - account.reserved)
                return adm
            account.reserved += cost
            adm.budget_left_usd = budget - account.spent - account.reserved
            adm.cost_usd = cost
        if window is None and account is None:
            return adm  # nothing limited, nothing taken
        hold = _Hold(window, None)
        if window is not None:
            if rpm is not None:
                window.requests.append(now)
                hold.at = now
            if tpm is not None:
                hold.bucket = window.add_tokens(now, float(tokens))
                hold.tokens = float(tokens)
        if account is not None:
            hold.account, hold.amount = account, request.cost_usd
        adm.ticket = f"m{next(self._ids)}"
        self._holds[adm.ticket] = hold
        return adm

    def settle(self, admission: Admission, tokens: int, cost_usd: float) -> None:
        if admission.settled:
            return
        admission.settled = True
        hold = self._holds.pop(admission.ticket, None)
        if hold is not None:
            _give_back(hold, float(tokens), cost_usd)

    def release(self, admission: Admission) -> None:
        if admission.settled:
            return
        admission.settled = True
        hold = self._holds.pop(admission.ticket, None)
        if hold is None:
            return
        if hold.window is not None and hold.at is not None:
            with contextlib.suppress(ValueError):  # gone already: out of the window
                hold.window.requests.remove(hold.at)
        _give_back(hold, 0.0, 0.0)

    async def spent(self, client_id: str, month: str) -> float:
        account = self._accounts.get(client_id)
        return account.spent if account is not None and account.month == month else 0.0

    async def seed_spend(self, month: str, spend: Mapping[str, float]) -> None:
        for client_id, amount in spend.items():
            account = self._accounts.get(client_id)
            if account is None or account.month < month:
                self._accounts[client_id] = _Account(month, float(amount))

    async def flush(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def _refused(adm: Admission, by: RefusedBy, reset: float) -> Admission:
    adm.allowed, adm.refused = False, by
    adm.retry_after_s = float(max(1, math.ceil(reset)))
    return adm


def _give_back(hold: _Hold, tokens: float, cost_usd: float) -> None:
    """The estimate replaced by `tokens` (while its bucket is in the window) and the reservation
    by `cost_usd`. The account is the one the reservation was made in: when the month has turned
    since, it is no longer the client's, and this month's account is left alone."""
    bucket, window = hold.bucket, hold.window
    if bucket is not None and window is not None and bucket[2]:
        delta = tokens - hold.tokens
        bucket[1] += delta
        window.token_total += delta
    account = hold.account
    if account is not None:
        account.reserved = max(0.0, account.reserved - hold.amount)
        account.spent += cost_usd
