"""The upstream HTTP/1.1 client: keep-alive connections per (scheme, host, port) on asyncio
protocols, responses parsed by httptools (uvicorn's parser), bodies handed over as they arrive.

Measured on the bench machine: one call through aiohttp's ClientSession took ~80 µs of CPU in a
sequential loop, ~27 µs with this client; relaygate's whole S1 request went from 169 to 104 µs.
It does what the gateway needs and no more: no redirects, cookies, proxies or retries of its own
(the attempt loop retries), gzip/deflate answers decoded (aiohttp's Accept-Encoding is kept),
deadlines left to the caller (routing/deadlines.py) except a connect timeout. Failures are
OSErrors (ConnectionError subclasses), TLS failures ssl.SSLError (an OSError too)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
import zlib
from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import urlsplit

import aiohappyeyeballs
import httptools

from relaygate.providers._http_response import (
    HIGH_WATER,
    UNDECODABLE,
    Response,
    UpstreamBodyTooLarge,
    UpstreamDisconnected,
    UpstreamProtocolError,
)
from relaygate.types import StreamedBody

AddrInfo = tuple[Any, ...]  # as socket.getaddrinfo gives them

__all__ = [
    "Response",
    "UpstreamBodyTooLarge",
    "UpstreamClient",
    "UpstreamDisconnected",
    "UpstreamProtocolError",
]

CONNECT_TIMEOUT_S = 10.0
DNS_TTL_S = 300.0
KEEPALIVE_S = 30.0  # an idle connection older than this is closed, not reused
_COMPUTED = frozenset({"content-length", "transfer-encoding", "connection"})


class _Target:
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


class _Connection(asyncio.Protocol):
    __slots__ = (
        "client",
        "drained",
        "idle_since",
        "informational",
        "keep",
        "lost",
        "parser",
        "paused",
        "response",
        "target",
        "transport",
        "write_paused",
    )

    def __init__(self, client: UpstreamClient, target: _Target) -> None:
        self.client = client
        self.target = target
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.keep = False
        self.lost = False
        self.paused = False
        self.informational = False
        self.idle_since = 0.0
        self.write_paused = False  # the transport's write buffer is full (a streamed body)
        self.drained: asyncio.Future[None] | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self.response is None or self.response.complete:  # bytes nobody asked for
            self.keep = False
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._broken(UpstreamProtocolError(f"invalid HTTP answer: {exc}"))

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
        assert self.response is not None
        self.response._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        resp = self.response
        assert resp is not None
        status = self.parser.get_status_code()
        if status < 200:  # 1xx: an interim answer, the real one follows
            self.informational = True
            resp._raw_headers = []
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

    # --- the client's side ----------------------------------------------------------------
    def _broken(self, error: BaseException) -> None:
        if self.response is not None:
            self.response._fail(error)
        self.close()

    def resume(self) -> None:
        self.paused = False
        if self.transport is not None:
            self.transport.resume_reading()

    def start(self, data: bytes) -> Response:
        assert self.transport is not None
        self.response = resp = Response(self)
        self.keep = False
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
            if self.paused:
                self.resume()
            self.client._release(self)  # the parser goes on with the next answer
        else:
            self.close()

    def usable(self, now: float) -> bool:
        transport = self.transport
        return (
            not self.lost
            and transport is not None
            and not transport.is_closing()
            and now - self.idle_since < KEEPALIVE_S
        )

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        if self.response is not None:
            self.response._fail(UpstreamDisconnected("the connection was closed"))


def _default_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


class UpstreamClient:
    """One per Gateway. `request` returns once the status line and headers arrived."""

    def __init__(self, *, tls: ssl.SSLContext | None = None) -> None:
        self._idle: dict[tuple[bool, str, int], list[_Connection]] = {}
        self._targets: dict[tuple[str, str], _Target] = {}
        self._tls = tls  # default: the system's trust store, as aiohttp's
        self._dns: dict[tuple[str, int], tuple[float, list[AddrInfo]]] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self.closed = False

    async def request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | StreamedBody | None
    ) -> Response:
        """Send a request; `body` as bytes, or streamed (StreamedBody: an upload)."""
        target = self._targets.get((method, url))
        if target is None:
            target = _Target(url, method)
            if len(self._targets) > 1000:
                self._targets.clear()
            self._targets[method, url] = target
        names = {name.lower() for name in headers}
        parts = [target.line]
        if "host" not in names:
            parts.append(target.host_line)
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"a newline in the upstream header {name!r}")
            if name.lower() not in _COMPUTED:
                parts.append(f"{name}: {value}\r\n")
        if "accept" not in names:  # aiohttp's defaults, as before; a configured one wins
            parts.append("Accept: */*\r\n")
        if "accept-encoding" not in names:
            parts.append("Accept-Encoding: gzip, deflate\r\n")
        streamed: StreamedBody | None = None
        if body is None or isinstance(body, bytes):
            payload = body or b""
            parts.append(f"Content-Length: {len(payload)}\r\n\r\n")
        else:
            streamed, payload = body, b""
            parts.append(f"Content-Length: {body.length}\r\n\r\n")
        data = "".join(parts).encode("utf-8") + payload
        conn = self._idle_connection(target) or await self._connect(target)
        resp = conn.start(data)
        try:
            if streamed is not None:
                await conn.write_body(resp, streamed)
            while not resp.status:
                if resp._error is not None:
                    raise resp._error
                await resp._wait()
        except BaseException:
            conn.close()
            raise
        return resp

    def _idle_connection(self, target: _Target) -> _Connection | None:
        idle = self._idle.get(target.key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.usable(now):
                return conn
            conn.close()
        return None

    async def _connect(self, target: _Target) -> _Connection:
        """A new connection as aiohttp's connector made them: addresses cached for DNS_TTL_S,
        happy eyeballs between them (aiohappyeyeballs, 250 ms), TCP_NODELAY, then TLS."""
        if self.closed:
            raise RuntimeError("the upstream client is closed")
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        if target.tls:
            if self._tls is None:  # reads the trust store from disk: off the event loop
                self._tls = await asyncio.to_thread(_default_tls)
            tls = self._tls
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            sock = await aiohappyeyeballs.start_connection(
                await self._addresses(target), happy_eyeballs_delay=0.25
            )
            try:
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, target),
                    sock=sock,
                    ssl=tls,
                    server_hostname=target.host if tls else None,
                )
            except BaseException:
                sock.close()
                raise
        return conn

    async def _addresses(self, target: _Target) -> list[AddrInfo]:
        now = time.monotonic()
        cached = self._dns.get((target.host, target.port))
        if cached is not None and cached[0] > now:
            return cached[1]
        infos = await asyncio.get_running_loop().getaddrinfo(
            target.host, target.port, type=socket.SOCK_STREAM, flags=socket.AI_ADDRCONFIG
        )
        if not infos:
            raise OSError(f"no address for {target.host}")
        if len(self._dns) > 1000:
            self._dns.clear()
        self._dns[target.host, target.port] = (now + DNS_TTL_S, infos)
        return infos

    def _release(self, conn: _Connection) -> None:
        if self.closed:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle = self._idle.setdefault(conn.target.key, [])
        idle.append(conn)
        if len(idle) > 1 and not idle[0].usable(conn.idle_since):  # the oldest one expired
            idle.pop(0).close()
        if self._sweep is None:  # idle connections past KEEPALIVE_S are closed even when quiet
            loop = asyncio.get_running_loop()
            self._sweep = loop.call_later(KEEPALIVE_S, self._close_expired)

    def _close_expired(self) -> None:
        self._sweep = None
        now = time.monotonic()
        for key, idle in list(self._idle.items()):
            keep = [conn for conn in idle if conn.usable(now)]
            for conn in idle:
                if not conn.usable(now):
                    conn.close()
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        if self._idle and not self.closed:
            self._sweep = asyncio.get_running_loop().call_later(KEEPALIVE_S, self._close_expired)

    async def close(self) -> None:
        self.closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
