"""The usage ledger: rows go into a bounded in-memory buffer and are written in batches by a
background task. While the database is away rows wait (up to the bound); past it the oldest are
dropped and counted. A graceful shutdown flushes what is left."""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

log = logging.getLogger("relaygate.ledger")
RETRY_MAX_S = 5.0
CLIENT_CLOSED = "client_closed"  # the error code of a call whose client went away
NOT_ERRORS = (CLIENT_CLOSED, "client_disconnected")  # (the code's name before 0.2)


@dataclass(slots=True)
class LedgerRow:
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

    def as_dict(self) -> dict[str, Any]:
        """The row for the store (every field is flat: no dataclasses.asdict, ~10x cheaper)."""
        return {
            "id": self.id,
            "ts": self.ts,
            "day": _day(int(self.ts // 86400)),
            "client_id": self.client_id,
            "client": self.client,
            "route": self.route,
            "provider": self.provider,
            "model": self.model,
            "key_id": self.key_id,
            "status": self.status,
            "error_code": self.error_code,
            "latency_ms": self.latency_ms,
            "ttft_ms": self.ttft_ms,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "cost_usd": self.cost_usd,
            "cache": self.cache,
            "stream": int(self.stream),
            "attempts": self.attempts,
            "estimated": int(self.estimated),
        }


@lru_cache(maxsize=8)
def _day(day_number: int) -> str:
    """The UTC date of a day number (days since the epoch), computed once per day."""
    return time.strftime("%Y-%m-%d", time.gmtime(day_number * 86400))


class LedgerSink(Protocol):
    def write_ledger(self, rows: list[dict[str, Any]]) -> None: ...


def _write(sink: LedgerSink, rows: list[LedgerRow]) -> None:
    """In the writer thread: rows become dicts there, not on the event loop."""
    sink.write_ledger([r.as_dict() for r in rows])


class Ledger:
    def __init__(
        self,
        sink: LedgerSink | None,
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

    @property
    def depth(self) -> int:
        return len(self._buffer)

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
                write = asyncio.ensure_future(asyncio.to_thread(_write, self.sink, take))
                try:
                    # the thread cannot be stopped: a cancelled flush leaves the write to finish
                    # and its rows are counted, or put back, when it does (never lost, never twice)
                    await asyncio.shield(write)
                except asyncio.CancelledError:
                    write.add_done_callback(functools.partial(self._settled, take))
                    raise
                except (sqlite3.Error, OSError) as exc:
                    self._settled(take, write)
                    log.warning(
                        "ledger write failed (%s); %d rows wait",
                        type(exc).__name__,
                        len(self._buffer),
                    )
                    return False
                self.written += len(take)
        return True

    def _settled(self, rows: list[LedgerRow], write: asyncio.Future[None]) -> None:
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
