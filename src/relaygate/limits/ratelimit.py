"""Per-client rate limits: requests and tokens in a sliding 60-second window, in memory.
Tokens are counted from an estimate at admission and corrected with the real usage afterwards."""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from relaygate.errors import RateLimitExceeded

WINDOW_S = 60.0


@dataclass(slots=True)
class _Window:
    """Requests as timestamps (at most `rpm` of them: refused requests are not kept) and tokens in
    one-second buckets `[second, tokens, alive]` with a running total, so admission is O(1)."""

    requests: deque[float] = field(default_factory=deque)
    tokens: deque[list[float]] = field(default_factory=deque)
    token_total: float = 0.0

    def trim(self, now: float) -> None:
        edge = now - WINDOW_S
        while self.requests and self.requests[0] <= edge:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] + 1 <= edge:
            bucket = self.tokens.popleft()
            self.token_total -= bucket[1]
            bucket[2] = 0.0
        if not self.tokens:
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

    def adjust(self, bucket: list[float], delta: float) -> None:
        if bucket[2]:  # still inside the window
            bucket[1] += delta
            self.token_total += delta


@dataclass(slots=True)
class Admitted:
    """What the rate limiter admitted; `settle` corrects the token estimate."""

    headers: dict[str, str]
    _window: _Window | None = None
    _at: float | None = None
    _bucket: list[float] | None = None
    _tokens: float = 0.0

    def settle(self, tokens: int) -> None:
        if self._bucket is not None and self._window is not None:
            self._window.adjust(self._bucket, tokens - self._tokens)
            self._tokens = float(tokens)

    def cancel(self) -> None:
        """Take the request back (it was refused later, e.g. by its budget)."""
        if self._window is not None and self._at is not None:
            with contextlib.suppress(ValueError):
                self._window.requests.remove(self._at)
            self._at = None  # once: a second cancel must not take another request's slot
        self.settle(0)


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._windows: dict[str, _Window] = {}

    def admit(
        self, client_id: str, *, rpm: int | None, tpm: int | None, est_tokens: int
    ) -> Admitted:
        if rpm is None and tpm is None:
            return Admitted({})
        now = self.clock()
        window = self._windows.get(client_id)
        if window is None:
            window = self._windows[client_id] = _Window()
        window.trim(now)
        headers: dict[str, str] = {}
        if rpm is not None:
            used = len(window.requests)
            reset = window.requests[0] + WINDOW_S - now if window.requests else WINDOW_S
            if used >= rpm:
                raise self._refuse("requests", rpm, reset, headers_for(rpm, 0, reset))
            headers = headers_for(rpm, rpm - used - 1, reset)
        if tpm is not None:
            used_tokens = window.token_total
            if window.tokens and used_tokens + est_tokens > tpm:
                reset = window.tokens[0][0] + 1 + WINDOW_S - now
                raise self._refuse("tokens", tpm, reset, headers)
            headers["x-ratelimit-limit-tokens"] = str(tpm)
            remaining_tokens = max(0, int(tpm - used_tokens - est_tokens))
            headers["x-ratelimit-remaining-tokens"] = str(remaining_tokens)
        if rpm is not None:
            window.requests.append(now)
        admitted = Admitted(headers, window, now)
        if tpm is not None:
            admitted._bucket = window.add_tokens(now, float(est_tokens))
            admitted._tokens = float(est_tokens)
        return admitted

    @staticmethod
    def _refuse(what: str, limit: int, reset: float, headers: dict[str, str]) -> RateLimitExceeded:
        wait = max(1, math.ceil(reset))
        return RateLimitExceeded(
            f"Rate limit of {limit} {what} per minute reached for this key; retry in {wait} s.",
            headers={**headers, "retry-after": str(wait)},
        )


def headers_for(limit: int, remaining: int, reset_s: float) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": str(limit),
        "x-ratelimit-remaining-requests": str(max(0, remaining)),
        "x-ratelimit-reset-requests": f"{max(0.0, reset_s):.0f}s",
    }
