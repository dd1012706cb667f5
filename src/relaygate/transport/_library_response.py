"""An aiohttp answer as the seam's UpstreamResponse (types.py): status and headers, then the body
decoded under its cap, read whole or chunk by chunk; `close` gives the connection back when the
body was read to its end (aiohttp closes it otherwise)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import aiohttp

from relaygate.transport._decode import BoundedDecoder
from relaygate.transport.errors import BodyTooLarge


class LibraryResponse:
    __slots__ = ("_decoder", "_resp", "status")

    def __init__(self, resp: aiohttp.ClientResponse, max_body_bytes: int) -> None:
        self._resp = resp
        self.status = resp.status
        encoding = resp.headers.get("Content-Encoding", "")
        self._decoder = BoundedDecoder(encoding, max_body_bytes)

    @property
    def headers(self) -> Mapping[str, str]:
        return self._resp.headers

    async def read(self, limit: int) -> bytes:
        """The whole body; BodyTooLarge past `limit` bytes (or the transport's cap)."""
        self._decoder.limit = min(self._decoder.limit, limit)
        parts = [piece async for piece in self.iter_chunks()]
        return b"".join(parts)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, decoded."""
        decoder = self._decoder
        try:
            async for data in self._resp.content.iter_any():
                out = decoder.feed(data)
                if out:
                    yield out
            tail = decoder.end()
        except BodyTooLarge:
            self._resp.close()  # the rest is not read: the connection goes
            raise
        except aiohttp.ClientPayloadError:
            raise ConnectionResetError("the upstream closed the connection early") from None
        if tail:
            yield tail

    def close(self) -> None:
        self._resp.release()
