"""Bounded body decoding shared by the library transports: gzip and deflate decoded in steps of
at most STEP bytes, so an answer that inflates a thousandfold (a gzip bomb) costs no more
memory than its limit plus one step, and stops with BodyTooLarge at the limit."""

from __future__ import annotations

import zlib

from relaygate.transport.errors import BodyTooLarge, TransportError

STEP = 256 * 1024


class UndecodableBody(TransportError):
    """The answer says gzip or deflate and is not."""


class BoundedDecoder:
    """Raw body bytes in, decoded bytes out; BodyTooLarge once more than `limit` came out."""

    __slots__ = ("_zlib", "limit", "size")

    def __init__(self, encoding: str, limit: int) -> None:
        encoding = encoding.strip().lower()
        if encoding in ("gzip", "x-gzip"):
            self._zlib: zlib._Decompress | None = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._zlib = zlib.decompressobj()
        else:  # identity, or one this gateway did not ask for: passed on as it came
            self._zlib = None
        self.limit = limit
        self.size = 0

    def feed(self, data: bytes) -> bytes:
        if self._zlib is None:
            return self._count(data)
        out: list[bytes] = []
        try:
            while data:
                piece = self._zlib.decompress(data, STEP)
                out.append(self._count(piece))
                data = self._zlib.unconsumed_tail
        except zlib.error:
            raise UndecodableBody("the upstream sent a body that does not decode") from None
        return b"".join(out)

    def end(self) -> bytes:
        if self._zlib is None:
            return b""
        try:
            return self._count(self._zlib.flush(STEP))
        except zlib.error:
            raise UndecodableBody("the upstream sent a body that does not decode") from None

    def _count(self, data: bytes) -> bytes:
        self.size += len(data)
        if self.size > self.limit:
            raise BodyTooLarge(f"the upstream's answer is larger than {self.limit} bytes")
        return data
