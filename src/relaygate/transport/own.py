"""The own HTTP/1.1 transport: keep-alive connections per (scheme, host, port) on asyncio
protocols (_own_connection.py), answers parsed by httptools (uvicorn's parser) and handed over
as they arrive (own_response.py).

Measured on the bench machine: one call through aiohttp's ClientSession took ~80 µs of CPU in a
sequential loop, ~27 µs with this client; relaygate's whole S1 request went from 169 to 104 µs,
so `transport.kind: auto` keeps it wherever no proxy, TLS option or HTTP/2 asks for the library
transport. It does what the gateway needs and no more: no redirects, cookies or proxies, and
the bounds of SPEC §11a: at most `max_connections_per_host` connections per host (requests past
them wait for a free one within the connect timeout), idle connections closed after
`keepalive_s`, the answer's head bounded (count and bytes), the decoded body capped (gzip and
deflate decoded in steps), a connect timeout, and a request that meets a kept-alive connection
the upstream has just closed sent once more on a new one. Failures: TransportError (errors.py,
never the key's fault), else OSErrors (ConnectionError subclasses; TLS: ssl.SSLError)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import deque
from collections.abc import Mapping
from typing import Any, cast

import aiohappyeyeballs

from relaygate.transport._own_connection import Connection, Target
from relaygate.transport.base import NO_OPTIONS, Body, RequestOptions
from relaygate.transport.errors import ConnectTimeout, ProxyError
from relaygate.transport.options import TransportOptions
from relaygate.transport.own_response import (
    Response,
    UpstreamBodyTooLarge,
    UpstreamDisconnected,
    UpstreamProtocolError,
)
from relaygate.types import StreamedBody

AddrInfo = tuple[Any, ...]  # as socket.getaddrinfo gives them
HostKey = tuple[bool, str, int]

__all__ = [
    "OwnTransport",
    "Response",
    "UpstreamBodyTooLarge",
    "UpstreamDisconnected",
    "UpstreamProtocolError",
]

DNS_TTL_S = 300.0
_COMPUTED = frozenset({"content-length", "transfer-encoding", "connection"})
_DEFAULTS = TransportOptions()


def _tls(options: TransportOptions | None) -> ssl.SSLContext:
    context = ssl.create_default_context() if options is None else options.ssl_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


def has_tls_options(options: TransportOptions) -> bool:
    return bool(options.ca_bundle or not options.verify or options.client_cert)


class OwnTransport:
    """One per provider (its limits); `request` returns once the status line and headers
    arrived. `tls`: a context of the caller's, else the provider's TLS options (read here, at
    start) or the system's trust store (read on the first https call, off the event loop)."""

    def __init__(
        self, options: TransportOptions = _DEFAULTS, *, tls: ssl.SSLContext | None = None
    ) -> None:
        self.options = options
        self.connect_timeout_s = options.connect_timeout_s
        self.keepalive_s = options.keepalive_s
        self.max_per_host = options.max_connections_per_host
        self.max_header_count = options.max_header_count
        self.max_header_bytes = options.max_header_bytes
        self.max_body = options.max_body_bytes
        if tls is None and has_tls_options(options):
            tls = _tls(options)
        self._tls = tls
        self._idle: dict[HostKey, list[Connection]] = {}
        self._open: dict[HostKey, int] = {}  # connections per host, idle ones included
        self._waiters: dict[HostKey, deque[asyncio.Future[Connection | None]]] = {}
        self._targets: dict[tuple[str, str], Target] = {}
        self._dns: dict[tuple[str, int], tuple[float, list[AddrInfo]]] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self.closed = False

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: Body,
        options: RequestOptions = NO_OPTIONS,
    ) -> Response:
        """Send a request; `body` as bytes, or streamed (StreamedBody: an upload)."""
        if options.proxy is not None:
            raise ProxyError("the own transport speaks no proxy (transport.kind: library does)")
        target = self._targets.get((method, url))
        if target is None:
            target = Target(url, method)
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
            if getattr(body, "length", None) is None:
                raise TypeError("the own transport sends bytes or a StreamedBody")
            streamed, payload = cast(StreamedBody, body), b""
            parts.append(f"Content-Length: {streamed.length}\r\n\r\n")
        data = "".join(parts).encode("utf-8") + payload
        again = True  # a stale kept-alive connection: sent once more on a new one
        while True:
            conn = self._idle_connection(target) or await self._connect(target)
            resp = conn.start(data, self.max_body)
            try:
                if streamed is not None:
                    await conn.write_body(resp, streamed)
                while not resp.status:
                    if resp._error is not None:
                        raise resp._error
                    await resp._wait()
            except UpstreamDisconnected:
                conn.close()
                if again and conn.reused and conn.head_bytes == 0:
                    again = False  # nothing came back: the upstream closed it before reading
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            return resp

    def _idle_connection(self, target: Target) -> Connection | None:
        idle = self._idle.get(target.key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.usable(now, self.keepalive_s):
                return conn
            conn.close()
        return None

    async def _connect(self, target: Target) -> Connection:
        """A free slot in the host's bound (else a wait for one), then a new connection as
        aiohttp's connector made them: addresses cached for DNS_TTL_S, happy eyeballs between
        them (aiohappyeyeballs, 250 ms), TCP_NODELAY, then TLS; all within the connect timeout."""
        if self.closed:
            raise RuntimeError("the upstream client is closed")
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        if target.tls:
            if self._tls is None:  # reads the trust store from disk: off the event loop
                self._tls = await asyncio.to_thread(_tls, None)
            tls = self._tls
        key = target.key
        made: list[Connection] = []
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                if self._open.get(key, 0) >= self.max_per_host:
                    handed = await self._wait_for_slot(key)
                    if handed is not None:
                        return handed
                else:
                    self._open[key] = self._open.get(key, 0) + 1
                try:
                    sock = await aiohappyeyeballs.start_connection(
                        await self._addresses(target), happy_eyeballs_delay=0.25
                    )
                    try:
                        if sock.family in (socket.AF_INET, socket.AF_INET6):
                            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        _, conn = await loop.create_connection(
                            lambda: _made(made, Connection(self, target)),
                            sock=sock,
                            ssl=tls,
                            server_hostname=target.host if tls else None,
                        )
                    except BaseException:
                        sock.close()
                        raise
                except BaseException:
                    if made:
                        made[0].close()  # gives its slot back
                    else:
                        self._gone(key)
                    raise
        except TimeoutError:
            raise ConnectTimeout(
                "no connection to the upstream within the connect timeout"
            ) from None
        return conn

    async def _wait_for_slot(self, key: HostKey) -> Connection | None:
        """Queued for the host: a connection handed over by a request that finished, or None
        (the slot of a connection that closed, now this request's)."""
        waiter: asyncio.Future[Connection | None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, deque()).append(waiter)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():  # handed over, then cancelled
                handed = waiter.result()
                if handed is not None:
                    self._release(handed)
                else:
                    self._gone(key)
            raise

    def _next_waiter(self, key: HostKey) -> asyncio.Future[Connection | None] | None:
        waiters = self._waiters.get(key)
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                return waiter
        if waiters is not None:
            del self._waiters[key]
        return None

    def _gone(self, key: HostKey) -> None:
        """A connection of `key` closed (or never opened): its slot to a waiter, else free."""
        waiter = self._next_waiter(key) if self._waiters else None
        if waiter is not None:
            waiter.set_result(None)
            return
        left = self._open.get(key, 0) - 1
        if left > 0:
            self._open[key] = left
        else:
            self._open.pop(key, None)

    async def _addresses(self, target: Target) -> list[AddrInfo]:
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

    def _release(self, conn: Connection) -> None:
        if self.closed:
            conn.close()
            return
        key = conn.target.key
        waiter = self._next_waiter(key) if self._waiters else None
        if waiter is not None:  # a queued request takes it as it is
            waiter.set_result(conn)
            return
        conn.idle_since = time.monotonic()
        idle = self._idle.setdefault(key, [])
        idle.append(conn)
        if len(idle) > 1 and not idle[0].usable(conn.idle_since, self.keepalive_s):
            idle.pop(0).close()  # the oldest one expired
        if self._sweep is None:  # idle connections past the keep-alive close even when quiet
            loop = asyncio.get_running_loop()
            self._sweep = loop.call_later(self.keepalive_s, self._close_expired)

    def _close_expired(self) -> None:
        self._sweep = None
        now = time.monotonic()
        for key, idle in list(self._idle.items()):
            keep = [conn for conn in idle if conn.usable(now, self.keepalive_s)]
            for conn in idle:
                if not conn.usable(now, self.keepalive_s):
                    conn.close()
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        if self._idle and not self.closed:
            loop = asyncio.get_running_loop()
            self._sweep = loop.call_later(self.keepalive_s, self._close_expired)

    async def aclose(self) -> None:
        self.closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(RuntimeError("the upstream client is closed"))
        self._waiters.clear()


def _made(made: list[Connection], conn: Connection) -> Connection:
    made.append(conn)
    return conn
