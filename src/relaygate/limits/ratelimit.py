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
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[list[float]] = field(default_factory=deque)  # [t, tokens]

    def trim(self, now: float) -> None:
        edge = now - WINDOW_S
        while self.requests and self.requests[0] <= edge:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= edge:
            self.tokens.popleft()

    def token_sum(self) -> float:
        return sum(entry[1] for entry in self.tokens)


@dataclass(slots=True)
class Admitted:
    """What the rate limiter admitted; `settle` corrects the token estimate."""

    headers: dict[str, str]
    _entry: list[float] | None = None

    _window: _Window | None = None
    _at: float | None = None

    def settle(self, tokens: int) -> None:
        if self._entry is not None:
            self._entry[1] = float(tokens)

    def cancel(self) -> None:
        """Take the request back (it was refused later, e.g. by its budget)."""
        if self._window is not None and self._at is not None:
            with contextlib.suppress(ValueError):
                self._window.requests.remove(self._at)
            if self._entry is not None:
                self._entry[1] = 0.0


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
        window = self._windows.setdefault(client_id, _Window())
        window.trim(now)
        headers: dict[str, str] = {}
        if rpm is not None:
            used = len(window.requests)
            reset = window.requests[0] + WINDOW_S - now if window.requests else WINDOW_S
            if used >= rpm:
                raise self._refuse("requests", rpm, reset, headers_for(rpm, 0, reset))
            headers = headers_for(rpm, rpm - used - 1, reset)
        if tpm is not None:
            used_tokens = window.token_sum()
            if window.tokens and used_tokens + est_tokens > tpm:
                reset = window.tokens[0][0] + WINDOW_S - now
                raise self._refuse("tokens", tpm, reset, headers)
            headers["x-ratelimit-limit-tokens"] = str(tpm)
            headers["x-ratelimit-remaining-tokens"] = str(
                max(0, int(tpm - used_tokens - est_tokens))
            )
        window.requests.append(now)
        entry = None
        if tpm is not None:
            entry = [now, float(est_tokens)]
            window.tokens.append(entry)
        return Admitted(headers, entry, window, now)

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
