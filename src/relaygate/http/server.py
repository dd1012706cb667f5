"""The HTTP server around the app: uvicorn with its httptools protocol, bounded the way SPEC §8a
asks. A request head is at most HEAD_MAX_BYTES in at most HEAD_MAX_LINES lines (431 above) and
arrives within HEAD_TIMEOUT_S of the connection or the request starting (408); a body within
BODY_TIMEOUT_S; framing that llhttp refuses (Content-Length with Transfer-Encoding, two
Content-Lengths) is a 400. All of these answer in the SPEC's error shape and close the connection.
A client that goes away before its answer started cancels the request's task (and so its upstream
call). A whole answer whose start message carries HOLD leaves in one write (head and body
together: one syscall, not two). SIGTERM lets in-flight requests finish for `shutdown_grace_s`,
then ends the rest."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import resource
import socket
from collections.abc import Generator
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from relaygate.errors import InvalidRequest
from relaygate.gateway import Gateway
from relaygate.http._common import GONE, HOLD, WATCHED

HEAD_MAX_BYTES = 64 * 1024
HEAD_MAX_LINES = 100
HEAD_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 60.0
# the collector's first threshold once the server is up (CPython's default is 700): a request
# makes and drops a few dozen tracked objects, so 700 meant a young collection every ~30
# requests, each walking the objects of every request in flight
GC_YOUNG_THRESHOLD = 7000
OPEN_FILES = 65536  # the soft open-files limit the server asks for at start
_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _answer(status: int, code: str, message: str) -> bytes:
    body = InvalidRequest(message, code=code).body()  # the SPEC's shape, type invalid_request_error
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body),
            body,
        )
    )


class _Collect:
    """Stands in for the transport while uvicorn renders a held head and the first body part."""

    __slots__ = ("closed", "parts")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def close(self) -> None:  # uvicorn's close after a last part: done once the parts are out
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


class OneWriteCycle(RequestResponseCycle):
    """uvicorn's request cycle, but a start message marked HOLD is kept until the first body
    part and leaves in the same write. A whole answer (one body part, a Content-Length of its
    size) is rendered here as uvicorn renders it: status line, uvicorn's default headers, the
    app's, with uvicorn's checks of names and values and its keep-alive rule; any other first
    part (a stream's, chunked) is rendered by uvicorn itself into one buffer. A new start
    message while a head is held (uvicorn's 500 after an app error) drops the held one."""

    _held: Any = None

    async def send(self, message: Any) -> None:
        held = self._held
        if held is None:
            if message.get(HOLD) and not self.response_started:
                self._held = message
                return
            await super().send(message)
            return
        self._held = None
        kind = message["type"]
        if kind == "http.response.body" and not message.get("more_body"):
            body = message.get("body", b"")
            whole = self._whole(held, body)
            if whole is not None:
                if self.flow.write_paused and not self.disconnected:
                    await self.flow.drain()
                if self.disconnected:
                    return
                self.response_started = self.response_complete = True
                self.chunked_encoding = False
                self.transport.write(whole)
                self.message_event.set()
                if not self.keep_alive:
                    self.transport.close()
                self.on_response()
                return
        if kind != "http.response.body":
            await super().send(message)
            return
        transport, collect = self.transport, _Collect()
        self.transport = collect  # type: ignore[assignment]
        try:
            await super().send(held)
            await super().send(message)
        finally:
            self.transport = transport
        if collect.parts and not transport.is_closing():
            transport.write(b"".join(collect.parts))
        if collect.closed:
            transport.close()

    def _whole(self, held: Any, body: bytes) -> bytes | None:
        """The answer's bytes, or None when uvicorn must render it (HEAD, no or another length,
        a connection header of the app's)."""
        if self.scope["method"] == "HEAD":
            return None
        headers = [*self.default_headers, *held.get("headers", ())]
        length = b"%d" % len(body)
        parts = [STATUS_LINE[held["status"]]]
        seen_length = False
        for name, value in headers:
            if name == b"content-length":
                if value != length:
                    return None
                seen_length = True
            elif name in (b"connection", b"transfer-encoding"):
                return None
            parts += (name, b": ", value, b"\r\n")
        if not seen_length:
            return None
        names = b"".join(name for name, _ in headers)
        if HEADER_RE.search(names) or not names.islower():
            raise RuntimeError("Invalid HTTP header name.")
        if HEADER_VALUE_RE.search(b"\t".join(value for _, value in headers)):
            raise RuntimeError("Invalid HTTP header value.")
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        parts += (b"\r\n", body)
        return b"".join(parts)


class BoundedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounded, timed request heads and bodies."""

    head_timeout_s = HEAD_TIMEOUT_S
    body_timeout_s = BODY_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_seen = 0  # bytes fed while the head was incomplete
        self._head_parsed = 0  # bytes of the URL and header lines parsed
        self._head_lines = 0
        self._timer: asyncio.TimerHandle | None = None
        self._got_bytes = False

    # --- timers -----------------------------------------------------------------------------
    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._expired, what)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, what: str) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        cycle: RequestResponseCycle | None = self.cycle
        if what == "head" and not self._got_bytes:
            self.transport.close()  # a connection that never said anything
            return
        if cycle is None or what == "head" or not cycle.response_started:
            self._refuse(_Refused(408, "request_timeout", f"The request {what} came too slowly."))
        else:
            self.transport.close()

    def _refuse(self, refusal: _Refused) -> None:
        self.transport.write(_answer(refusal.status, refusal.code, refusal.message))
        self.transport.close()

    # --- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.head_timeout_s, "head")

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        self._got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            refusal = exc.__context__
            if not isinstance(refusal, _Refused):  # uvicorn refused the target (CONNECT, ...)
                refusal = _Refused(400, "invalid_request", "Invalid request target.")
            self._refuse(refusal)
            return
        except httptools.HttpParserUpgrade:
            self._refuse(_Refused(400, "invalid_request", "Protocol upgrades are not served."))
            return
        except httptools.HttpParserError as exc:
            self._refuse(_Refused(400, "invalid_request", f"Invalid HTTP request: {exc}."))
            return
        if self._in_head:
            self._head_seen += len(data)
            if self._head_seen > HEAD_MAX_BYTES:
                self._refuse(_head_too_large())

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        cycle = self.cycle
        task = getattr(cycle, "relaygate_task", None)
        if (
            cycle is not None
            and task is not None
            and not cycle.response_complete
            and not task.done()
        ):
            cycle.scope[GONE] = True  # type: ignore[literal-required]
            task.cancel()  # nobody will read the answer (or the rest of a stream): stop
        super().connection_lost(exc)

    # --- httptools callbacks ----------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_seen = self._head_parsed = self._head_lines = 0
        if self._timer is None:
            self._arm(self.head_timeout_s, "head")

    def on_url(self, url: bytes) -> None:
        self._head_parsed += len(url)
        if self._head_parsed > HEAD_MAX_BYTES:
            raise _head_too_large()
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_lines += 1
        self._head_parsed += len(name) + len(value) + 4
        if self._head_lines > HEAD_MAX_LINES:
            raise _Refused(
                431, "request_headers_too_large", f"More than {HEAD_MAX_LINES} header lines."
            )
        if self._head_parsed > HEAD_MAX_BYTES:
            raise _head_too_large()
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._arm(self.body_timeout_s, "body")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        cycle.__class__ = OneWriteCycle  # uvicorn makes the cycle; it adds no state of its own
        cycle.scope[WATCHED] = True  # type: ignore[literal-required]
        task = self.loop.create_task(cycle.run_asgi(app))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)
        cycle.relaygate_task = task  # type: ignore[attr-defined]


def _head_too_large() -> _Refused:
    return _Refused(
        431, "request_headers_too_large", f"The request head is over {HEAD_MAX_BYTES} bytes."
    )


class GatewayServer(uvicorn.Server):
    """uvicorn's server whose shutdown first gives the gateway's requests their grace period."""

    def __init__(self, config: uvicorn.Config, gateway: Gateway, grace_s: float) -> None:
        super().__init__(config)
        self.gateway = gateway
        self.grace_s = grace_s

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """As uvicorn's, but a SIGTERM or SIGINT that ended in a clean shutdown is not raised
        again afterwards: the process exits 0 (SPEC §8a), not killed by its own signal."""
        with super().capture_signals():
            yield
            self._captured_signals.clear()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's start-up (the gateway's lifespan included); then everything start-up made
        (modules, the app, the config, the restored state) lives as long as the process and is
        moved out of the collector's reach (`gc.freeze`): a full collection walks only what
        requests left behind (walking it all took ~40 ms every ~20k requests, which set the p99
        under load), and young collections come a tenth as often. Measured under S1: the
        collector's time fell from about 5 % of the CPU to 1.6 % (bench/ANALYSIS.md)."""
        raise_open_files_limit()
        await super().startup(sockets)
        gc.collect()
        gc.freeze()
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        drain = asyncio.create_task(self.gateway.inflight.drain(self.grace_s))
        try:
            await super().shutdown(sockets)
        finally:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain


def raise_open_files_limit() -> None:
    """The soft open-files limit raised towards OPEN_FILES (never past the hard limit): a client
    connection and an upstream one per request in flight, with up to 1,000 upstream connections
    per host by default, pass the common soft limit of 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = OPEN_FILES if hard == resource.RLIM_INFINITY else min(OPEN_FILES, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def server_config(app: Any, *, grace_s: float, **options: Any) -> uvicorn.Config:
    """The uvicorn settings every relaygate server uses (the CLI's and the tests')."""
    return uvicorn.Config(
        app,
        http=BoundedProtocol,
        lifespan="on",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=int(grace_s) + 5,  # uvicorn's backstop behind drain()
        proxy_headers=False,  # client addresses are not used; skip the per-request rewrite
        **options,
    )
