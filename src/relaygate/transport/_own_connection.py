"""One keep-alive connection of the own HTTP/1.1 client (own.py): an asyncio protocol fed by
httptools (uvicorn's parser), the answer's head bounded (header count and size), its body handed
to the Response (own_response.py) as it arrives, a streamed upload written under flow control,
and the pool told once when the connection is gone (its slot in the host's bound is free)."""

from __future__ import annotations

import asyncio
import zlib
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

import httptools

from relaygate.transport.errors import HeadersTooLarge, TransportError
from relaygate.transport.own_response import (
    HIGH_WATER,
    UNDECODABLE,
    Response,
    UpstreamDisconnected,
    UpstreamProtocolError,
)
from relaygate.types import StreamedBody

if TYPE_CHECKING:
    from relaygate.transport.own import OwnTransport


class Target:
    """An upstream URL read once: where to connect and the request line to send."""

    __slots__ = ("host", "host_line", "key", "line", "port", "tls")

    def __init__(self, url: str, method: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {parts.scheme}://{parts.hostname or ''}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        default = 443 if self.tls else 80
        self.port = parts.port or default
        self.key = (self.tls, self.host, self.port)
        name = f"[{self.host}]" if ":" in self.host else self.host
        host = name if self.port == default else f"{name}:{self.port}"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if any(c in path or c in host for c in " \r\n"):
            raise ValueError("a space or newline in an upstream URL")
        self.line = f"{method} {path} HTTP/1.1\r\n"
        self.host_line = f"Host: {host}\r\n"


class Connection(asyncio.Protocol):
    __slots__ = (
        "client",
        "drained",
        "gone",
        "head_bytes",
        "idle_since",
        "informational",
        "keep",
        "lost",
        "parser",
        "paused",
        "response",
        "reused",
        "target",
        "transport",
        "write_paused",
    )

    def __init__(self, client: OwnTransport, target: Target) -> None:
        self.client = client
        self.target = target
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.keep = False
        self.lost = False
        self.gone = False  # the pool was told this connection no longer counts
        self.paused = False
        self.informational = False
        self.reused = False  # served an answer before: the upstream may have closed it since
        self.idle_since = 0.0
        self.head_bytes = 0  # bytes of the answer's head so far (bounded)
        self.write_paused = False  # the transport's write buffer is full (a streamed body)
        self.drained: asyncio.Future[None] | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        resp = self.response
        if resp is None or resp.complete:  # bytes nobody asked for
            self.keep = False
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._broken(UpstreamProtocolError(f"invalid HTTP answer: {exc}"))
            return
        if not resp.status and not self.lost:  # the head is still coming: bounded
            self.head_bytes += len(data)
            if self.head_bytes > self.client.max_header_bytes:
                self._broken(HeadersTooLarge("the upstream's answer head is past its bounds"))

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself; connection_lost settles the answer

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_writer()

    def _wake_writer(self) -> None:
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.transport = None
        self._wake_writer()
        self._leave()
        resp = self.response
        if resp is not None and not resp.complete:
            if resp.status and resp.ends_at_eof and exc is None:
                try:
                    resp._end()  # a body delimited by the end of the connection
                except zlib.error:
                    resp._fail(UpstreamProtocolError(UNDECODABLE))
            else:
                resp._fail(UpstreamDisconnected("the upstream closed the connection early"))

    # --- httptools callbacks ------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        resp = self.response
        assert resp is not None
        resp._raw_headers.append((name, value))
        if len(resp._raw_headers) > self.client.max_header_count:
            self._broken(HeadersTooLarge("the upstream's answer has too many headers"))

    def on_headers_complete(self) -> None:
        resp = self.response
        if resp is None or self.lost:
            return
        status = self.parser.get_status_code()
        if status < 200:  # 1xx: an interim answer, the real one follows
            self.informational = True
            resp._raw_headers = []
            self.head_bytes = 0
            return
        self.keep = bool(self.parser.should_keep_alive())
        encoding = b""
        delimited = False
        for name, value in resp._raw_headers:
            lowered = name.lower()
            if lowered == b"content-length" or (
                lowered == b"transfer-encoding" and b"chunked" in value.lower()
            ):
                delimited = True
            elif lowered == b"content-encoding":
                encoding = value.strip().lower()
        if encoding in (b"gzip", b"x-gzip"):
            resp._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == b"deflate":
            resp._decoder = zlib.decompressobj()
        resp.ends_at_eof = not delimited
        resp.status = status
        resp._wake()

    def on_body(self, body: bytes) -> None:
        resp = self.response
        if resp is None or self.lost:
            return
        try:
            resp._body(body)
        except zlib.error:
            self._broken(UpstreamProtocolError(UNDECODABLE))
            return
        except TransportError as exc:  # past the decoded body cap
            self._broken(exc)
            return
        if resp._size >= HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        resp = self.response
        if resp is None or self.lost:
            return
        if self.informational:
            self.informational = False
            return
        try:
            resp._end()
        except zlib.error:
            self._broken(UpstreamProtocolError(UNDECODABLE))
        except TransportError as exc:
            self._broken(exc)

    # --- the client's side ----------------------------------------------------------------
    def _broken(self, error: BaseException) -> None:
        if self.response is not None:
            self.response._fail(error)
        self.close()

    def resume(self) -> None:
        self.paused = False
        if self.transport is not None:
            self.transport.resume_reading()

    def start(self, data: bytes, max_body: int) -> Response:
        assert self.transport is not None
        self.response = resp = Response(self, max_body)
        self.keep = False
        self.head_bytes = 0
        self.transport.write(data)
        return resp

    async def write_body(self, resp: Response, body: StreamedBody) -> None:
        """A streamed body after the head, chunk by chunk, each waiting while the transport's
        buffer is full (so at most its high-water mark and one chunk are held); stopped when
        the upstream answers early (its answer is read as usual; the connection is not reused)."""
        sent = 0
        async for chunk in body.chunks():
            if resp._error is not None:
                raise resp._error
            if resp.status or self.transport is None:
                self.keep = False
                return
            self.transport.write(chunk)
            sent += len(chunk)
            while self.write_paused and not self.lost:
                self.drained = asyncio.get_running_loop().create_future()
                try:
                    await self.drained
                finally:
                    self.drained = None
        if sent != body.length:
            raise UpstreamProtocolError(f"a streamed body of {sent} bytes, {body.length} declared")

    def finish(self, resp: Response) -> None:
        if resp is not self.response:
            return
        if resp.complete and resp._error is None and self.keep and not self.lost:
            self.response = None
            self.reused = True
            if self.paused:
                self.resume()
            self.client._release(self)  # the parser goes on with the next answer
        else:
            self.close()

    def usable(self, now: float, keepalive_s: float) -> bool:
        transport = self.transport
        return (
            not self.lost
            and transport is not None
            and not transport.is_closing()
            and now - self.idle_since < keepalive_s
        )

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        self._leave()
        if self.response is not None:
            self.response._fail(UpstreamDisconnected("the connection was closed"))

    def _leave(self) -> None:
        if not self.gone:
            self.gone = True
            self.client._gone(self.target.key)
