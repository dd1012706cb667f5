"""The requests in flight, for a graceful shutdown (SPEC §8a): they get the grace period to
finish, then each one left is cancelled, which ends a stream with an error event and answers a
waiting request 503. Also how a call that ended with an exception is written in the ledger."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from relaygate.errors import RelaygateError, Unavailable
from relaygate.usage.ledger import CLIENT_CLOSED

log = logging.getLogger("relaygate.gateway")
SHUTTING_DOWN = Unavailable("The gateway is shutting down; retry.", code="shutting_down")


def outcome(exc: BaseException, *, closing: bool) -> tuple[int, str | None, int]:
    """(status, error code, attempts) of a call that ended with `exc`, for its ledger row."""
    if isinstance(exc, RelaygateError):
        return exc.status, exc.code, exc.attempts
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return (503, SHUTTING_DOWN.code, 0) if closing else (499, CLIENT_CLOSED, 0)
    return 500, "internal_error", 0


class Inflight:
    """The tasks serving proxied requests (a set add and a done callback per request)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closing = False  # the grace ran out: what is left is being ended

    def track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, grace_s: float) -> None:
        deadline = time.monotonic() + grace_s
        while self._tasks and (remaining := deadline - time.monotonic()) > 0:
            await asyncio.wait(set(self._tasks), timeout=remaining)
        self.closing = True
        left = [task for task in self._tasks if not task.done()]
        for task in left:
            task.cancel()
        if left:
            log.warning(
                "shutdown: %d request(s) still running after %.0f s were ended", len(left), grace_s
            )
