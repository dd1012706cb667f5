"""Deadlines without a timer each. `asyncio.timeout` starts and cancels one event-loop timer per
block (measured at 5-7 µs a block under uvloop with many timers pending, twice per request, and
aiohttp's socket read timeout re-arms one per stream chunk); a Watchdog keeps every pending
deadline in one set and checks them from a single timer that runs only while some deadline is
pending. An expired block is cancelled and raises TimeoutError, as with asyncio.timeout; it is
caught within TICK_S of its deadline."""

from __future__ import annotations

import asyncio
from types import TracebackType

TICK_S = 0.02


class _LoopState:
    __slots__ = ("guards", "handle", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.guards: set[Guard] = set()
        self.handle: asyncio.TimerHandle | None = None


class Watchdog:
    """One per Gateway; `guard(seconds)` is used as `with watchdog.guard(5): await ...`."""

    __slots__ = ("_states", "tick_s")

    def __init__(self, tick_s: float = TICK_S) -> None:
        self.tick_s = tick_s
        self._states: dict[asyncio.AbstractEventLoop, _LoopState] = {}

    def guard(self, seconds: float) -> Guard:
        return Guard(self, seconds)

    @property
    def pending(self) -> int:
        return sum(len(state.guards) for state in self._states.values())

    def _add(self, guard: Guard, loop: asyncio.AbstractEventLoop) -> _LoopState:
        state = self._states.get(loop)
        if state is None:
            state = self._states[loop] = _LoopState(loop)
        state.guards.add(guard)
        if state.handle is None:
            state.handle = loop.call_at(loop.time() + self.tick_s, self._tick, state)
        return state

    def _tick(self, state: _LoopState) -> None:
        now = state.loop.time()
        for guard in [g for g in state.guards if g.deadline <= now]:
            guard.expire()
        if state.guards:
            state.handle = state.loop.call_at(now + self.tick_s, self._tick, state)
        else:
            state.handle = None
            if self._states.get(state.loop) is state:
                del self._states[state.loop]


class Guard:
    """A deadline for the block it guards, in the task that enters it."""

    __slots__ = ("_cancelling", "_dog", "_seconds", "_state", "_task", "deadline", "expired")

    def __init__(self, dog: Watchdog, seconds: float) -> None:
        self._dog = dog
        self._seconds = seconds
        self.deadline = 0.0
        self.expired = False

    def __enter__(self) -> Guard:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline guard needs a running task")
        loop = task.get_loop()
        self._task = task
        self._cancelling = task.cancelling()
        self.deadline = loop.time() + self._seconds
        self._state = self._dog._add(self, loop)
        return self

    def expire(self) -> None:
        if not self.expired:
            self.expired = True
            self._task.cancel()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._state.guards.discard(self)
        if self.expired:  # this guard cancelled the task: take that back, say why
            unwound = self._task.uncancel() <= self._cancelling
            if unwound and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc
