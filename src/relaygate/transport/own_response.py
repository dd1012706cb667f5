"""An upstream answer as the own client (own.py) hands it over: status and headers once they
arrived, then the body as it comes (read whole, or chunk by chunk for streams), decoded (gzip,
deflate) in bounded steps and capped in total (BodyTooLarge: a gzip bomb stops at the cap)."""

from __future__ import annotations

import asyncio
import zlib
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING

from multidict import CIMultiDict, CIMultiDictProxy

from relaygate.transport.errors import BodyTooLarge

if TYPE_CHECKING:
    from relaygate.transport._own_connection import Connection

STEP = 256 * 1024  # decoded bytes per step: a bomb costs no more than its cap plus one step
HIGH_WATER = 1024 * 1024  # buffered body bytes before reading from the socket pauses
UNDECODABLE = "the upstream sent a body that does not decode"


class UpstreamBodyTooLarge(BodyTooLarge):
    """An answer's body grew past the limit its reader set."""

    def __init__(self, message: str = "the upstream's answer is larger than its reader takes"):
        super().__init__(message)


class UpstreamDisconnected(ConnectionResetError):
    """The connection closed before the answer was complete."""


class UpstreamProtocolError(ConnectionError):
    """The upstream sent something that is not HTTP/1.1."""


class Response:
    """One answer: status and headers once they arrived, then the body as it comes."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_decoder",
        "_error",
        "_headers",
        "_max",
        "_raw_headers",
        "_size",
        "_total",
        "_waiter",
        "complete",
        "ends_at_eof",
        "status",
    )

    def __init__(self, conn: Connection, max_body: int) -> None:
        self._conn: Connection | None = conn
        self._max = max_body  # decoded bytes in all (the transport's cap)
        self._total = 0
        self._chunks: deque[bytes] = deque()
        self._size = 0  # bytes buffered, not yet taken
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._headers: CIMultiDictProxy[str] | None = None
        self._decoder: zlib._Decompress | None = None
        self.status = 0
        self.ends_at_eof = False  # no Content-Length and not chunked: the body ends at EOF
        self.complete = False

    @property
    def headers(self) -> Mapping[str, str]:
        if self._headers is None:
            self._headers = CIMultiDictProxy(
                CIMultiDict(
                    (k.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
                    for k, v in self._raw_headers
                )
            )
        return self._headers

    # --- fed by the connection --------------------------------------------------------------
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _body(self, data: bytes) -> None:
        decoder = self._decoder
        if decoder is None:  # the common case, inlined: one add and one compare per piece
            size = len(data)
            self._total += size
            if self._total > self._max:
                raise BodyTooLarge(f"the upstream's answer is larger than {self._max} bytes")
            self._chunks.append(data)
            self._size += size
            self._wake()
            return
        while data:
            self._take(decoder.decompress(data, STEP))
            data = decoder.unconsumed_tail

    def _take(self, data: bytes) -> None:
        if data:
            self._total += len(data)
            if self._total > self._max:
                raise BodyTooLarge(f"the upstream's answer is larger than {self._max} bytes")
            self._chunks.append(data)
            self._size += len(data)
            self._wake()

    def _end(self) -> None:
        if self._error is not None:
            return
        if self._decoder is not None:  # its input was all taken in steps: a small tail
            self._take(self._decoder.flush())
        self.complete = True
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if not self.complete and self._error is None:
            self._error = error
            self._wake()

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    # --- the UpstreamResponse protocol ------------------------------------------------------
    async def read(self, limit: int) -> bytes:
        """The whole body; UpstreamBodyTooLarge past `limit` bytes."""
        while not self.complete:
            if self._error is not None:
                raise self._error
            if self._size > limit:
                raise UpstreamBodyTooLarge
            self._resume(limit)  # a whole body is wanted: read on up to its limit
            await self._wait()
        if self._size > limit:
            raise UpstreamBodyTooLarge
        data = b"".join(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
        self._chunks.clear()
        self._size = 0
        return data

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives: everything buffered at each step, in one piece."""
        while True:
            if self._chunks:
                data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
                self._chunks.clear()
                self._size = 0
                self._resume()
                yield data
            elif self.complete:
                return
            elif self._error is not None:
                raise self._error
            else:
                self._resume()
                await self._wait()

    def _resume(self, high_water: int = HIGH_WATER) -> None:
        """Reading from the socket goes on while fewer than `high_water` bytes wait: HIGH_WATER
        for a stream, the reader's limit for a whole body (which is buffered whole anyway)."""
        conn = self._conn
        if conn is not None and conn.paused and self._size < high_water:
            conn.resume()

    def close(self) -> None:
        """Give the connection back when the answer was read to its end; close it otherwise."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finish(self)
