"""The Watchdog: many deadlines on one timer. A guarded block past its deadline raises
TimeoutError within a tick, a block that ends in time is left alone (and its task is not
cancelled later), an outside cancellation stays a cancellation, and the timer stops when no
deadline is pending. Request ids sort by time."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from relaygate.accounting import new_request_id
from relaygate.routing.deadlines import Watchdog


def test_a_block_past_its_deadline_raises_timeout_error_within_a_tick():
    async def main() -> float:
        dog = Watchdog(tick_s=0.01)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError), dog.guard(0.05):
            await asyncio.sleep(5)
        return time.monotonic() - t0

    took = asyncio.run(main())
    assert 0.05 <= took < 0.05 + 0.1


def test_a_block_that_ends_in_time_is_not_cancelled_afterwards():
    async def main() -> None:
        dog = Watchdog(tick_s=0.01)
        with dog.guard(0.03):
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.08)  # well past the deadline: nothing may fire now
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
        assert dog.pending == 0

    asyncio.run(main())


def test_the_timer_runs_only_while_a_deadline_is_pending():
    async def main() -> None:
        dog = Watchdog(tick_s=0.01)
        with dog.guard(10):
            await asyncio.sleep(0.02)
            assert dog.pending == 1 and dog._states
        await asyncio.sleep(0.03)
        assert dog.pending == 0 and not dog._states  # the timer stopped with the last one

    asyncio.run(main())


def test_an_outside_cancellation_stays_a_cancellation():
    async def guarded(dog: Watchdog) -> None:
        with dog.guard(10):
            await asyncio.sleep(5)

    async def main() -> None:
        dog = Watchdog(tick_s=0.01)
        task = asyncio.create_task(guarded(dog))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert dog.pending == 0

    asyncio.run(main())


def test_many_deadlines_each_fire_on_their_own():
    async def one(dog: Watchdog, seconds: float) -> str:
        try:
            with dog.guard(seconds):
                await asyncio.sleep(0.1)
        except TimeoutError:
            return "timeout"
        return "done"

    async def main() -> list[str]:
        dog = Watchdog(tick_s=0.01)
        return await asyncio.gather(*(one(dog, s) for s in (0.02, 0.5, 0.03, 1.0)))

    assert asyncio.run(main()) == ["timeout", "done", "timeout", "done"]


def test_an_expired_inner_guard_leaves_the_outer_one_armed():
    async def main() -> str:
        dog = Watchdog(tick_s=0.01)
        with dog.guard(5):
            try:
                with dog.guard(0.02):
                    await asyncio.sleep(1)
            except TimeoutError:
                pass
            await asyncio.sleep(0.05)  # the outer deadline is far: no cancellation left over
            return "ok"

    assert asyncio.run(main()) == "ok"


def test_request_ids_keep_their_shape_and_sort_by_time():
    first = new_request_id()
    time.sleep(0.002)
    second = new_request_id()
    assert re.fullmatch(r"req_[0-9a-f]{32}", first) and re.fullmatch(r"req_[0-9a-f]{32}", second)
    assert first < second
    assert len({new_request_id() for _ in range(10_000)}) == 10_000
