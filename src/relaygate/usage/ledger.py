"""The usage ledger: rows go into a bounded in-memory buffer and are written in batches by a
background task. While the database is away rows wait (up to the bound); past it the oldest are
dropped and counted. A graceful shutdown flushes what is left."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Callable

from relaygate.state.protocols import NOT_ERRORS, LedgerStore
from relaygate.state.records import LedgerRecord, StateUnavailable

log = logging.getLogger("relaygate.ledger")
RETRY_MAX_S = 5.0
CLIENT_CLOSED = "client_closed"  # the error code of a call whose client went away
__all__ = ["CLIENT_CLOSED", "NOT_ERRORS", "Ledger", "LedgerRow"]


LedgerRow = LedgerRecord  # (the name callers knew it by)


class Ledger:
    def __init__(
        self,
        sink: LedgerStore | None,
        *,
        max_buffer: int = 50_000,
        batch: int = 1_000,
        interval_s: float = 1.0,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self.sink = sink
        self.max_buffer = max_buffer
        self.batch = batch
        self.interval_s = interval_s
        self._buffer: deque[LedgerRow] = deque()
        self.dropped = 0
        self.written = 0
        self._on_drop = on_drop
        self._lock = asyncio.Lock()
        self._inflight = 0  # rows taken by a write that has not finished yet

    @property
    def depth(self) -> int:
        """Rows not written yet: buffered, or in a write still under way."""
        return len(self._buffer) + self._inflight

    def record(self, row: LedgerRow) -> None:
        """Called on the request path: an append, never I/O."""
        if self.sink is None:
            return
        if len(self._buffer) >= self.max_buffer:
            self._buffer.popleft()
            self.dropped += 1
            if self._on_drop is not None:
                self._on_drop(1)
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                log.error(
                    "ledger: the buffer of %d rows is full; %d oldest rows dropped so far",
                    self.max_buffer,
                    self.dropped,
                )
        self._buffer.append(row)

    async def flush(self) -> bool:
        """Write everything buffered; False when the database refused (rows stay buffered)."""
        if self.sink is None:
            return True
        async with self._lock:
            while self._buffer:
                take = [self._buffer.popleft() for _ in range(min(self.batch, len(self._buffer)))]
                self._inflight += len(take)
                write = asyncio.ensure_future(self.sink.write(take))
                try:
                    # a cancelled flush leaves the write to finish (a thread or a transaction
                    # cannot be stopped half way): its rows are counted, or put back, when it
                    # does (never lost, never twice)
                    await asyncio.shield(write)
                except asyncio.CancelledError:
                    write.add_done_callback(functools.partial(self._settled, take))
                    raise
                except (StateUnavailable, OSError) as exc:
                    self._settled(take, write)
                    log.warning(
                        "ledger write failed (%s); %d rows wait",
                        type(exc).__name__,
                        len(self._buffer),
                    )
                    return False
                self._inflight -= len(take)
                self.written += len(take)
        return True

    def _settled(self, rows: list[LedgerRow], write: asyncio.Future[None]) -> None:
        self._inflight -= len(rows)
        if write.cancelled() or write.exception() is not None:
            self._buffer.extendleft(reversed(rows))
        else:
            self.written += len(rows)

    async def run(self) -> None:
        """Every `interval_s` while the database answers; after a failure, again with a backoff
        that doubles up to RETRY_MAX_S, so the rows go in soon after the database is back."""
        backoff = self.interval_s
        while True:
            await asyncio.sleep(backoff)
            ok = await self.flush()
            backoff = self.interval_s if ok else min(max(backoff, 0.25) * 2, RETRY_MAX_S)

    async def close(self, attempts: int = 3) -> None:
        for _ in range(attempts):
            if await self.flush():
                return
            await asyncio.sleep(0.2)
        if self._buffer:
            log.error("ledger: %d rows could not be written at shutdown", len(self._buffer))
