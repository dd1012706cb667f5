"""The request path's Redis connection: one plain TCP connection per replica (RESP parsed by
hiredis) on which every command issued in one turn of the event loop goes out in one write and
the replies come back in order (pipelining, as a RESP server answers). Used for the one script
each request runs (admit); everything else, and `rediss://` or `unix://` URLs, go through
redis-py (`redis_db`), which stays the library alternative (RELAYGATE_REDIS_WIRE=0 uses it for
admit too). Why it exists: under S1 redis-py's asyncio client cost about 150 µs of CPU a command
(a pooled connection taken and given back, its own parser and locks); a shared pipelined
connection costs a fraction of that (bench/ANALYSIS.md has the figures).

Bounded: at most MAX_PENDING commands wait for their replies (past that a call fails at once),
the connect and each reply take at most timeout_s (one timer for all the calls waiting, not one
per call: TimeoutError), and a lost connection fails every waiting call at once (the next call
opens a new one). A call that timed out or was cancelled keeps its place in the queue; its
reply is read and dropped. Errors are ConnectionError or
ReplyErrorFromServer; `redis_db` turns them into StateUnavailable, never quoting the URL."""

from __future__ import annotations

import asyncio
import collections
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis

MAX_PENDING = 10_000


class ReplyErrorFromServer(Exception):
    """An error reply (e.g. NOSCRIPT); its text is Redis's, never the URL."""


def encode(args: tuple[Any, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Protocol(asyncio.Protocol):
    def __init__(self, timeout_s: float) -> None:
        self.reader = hiredis.Reader()
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.deadlines: collections.deque[float] = collections.deque()  # one per waiting
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.timeout_s = timeout_s
        self._timer: asyncio.TimerHandle | None = None

    def expect(self, future: asyncio.Future[Any]) -> None:
        """A reply is due for `future` within timeout_s (one timer for all of them)."""
        loop = future.get_loop()
        self.waiting.append(future)
        self.deadlines.append(loop.time() + self.timeout_s)
        if self._timer is None:
            self._timer = loop.call_at(self.deadlines[0], self._expire)

    def _expire(self) -> None:
        """Fail the calls past their deadline (the oldest first: FIFO); they keep their place,
        so a late reply is read and dropped rather than given to the next call."""
        self._timer = None
        if not self.waiting:
            return
        loop = self.waiting[0].get_loop()
        now = loop.time()
        for future, deadline in zip(self.waiting, self.deadlines, strict=True):
            if deadline > now:
                self._timer = loop.call_at(deadline, self._expire)
                return
            if not future.done():
                future.set_exception(TimeoutError())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.waiting
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError:
                self._fail(ConnectionError("protocol error"))
                if self.transport is not None:
                    self.transport.close()
                return
            if reply is False:
                return
            if not waiting:
                continue  # (nothing asked: never happens with a RESP server)
            future = waiting.popleft()
            self.deadlines.popleft()
            if future.done():
                continue  # its caller stopped waiting
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(ReplyErrorFromServer(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(ConnectionError("connection lost"))

    def _fail(self, exc: Exception) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.deadlines.clear()
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(exc)


class PipelinedConnection:
    """Commands from many tasks on one connection; see the module docstring."""

    def __init__(self, url: str, timeout_s: float = 1.0) -> None:
        self.timeout_s = timeout_s  # to connect, and for each reply
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        path = parts.path.strip("/")
        self.db = int(path) if path.isdigit() else 0
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._buffer: list[bytes] = []
        self._flush_scheduled = False

    async def _connection(self) -> _Protocol:
        proto = self._proto
        if proto is not None and not proto.lost:
            return proto
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
            self._connecting.add_done_callback(self._connected)
        return await asyncio.shield(self._connecting)

    def _connected(self, done: asyncio.Future[_Protocol]) -> None:
        self._connecting = None
        if not done.cancelled() and done.exception() is None:
            self._proto = done.result()

    async def _connect(self) -> _Protocol:
        async with asyncio.timeout(self.timeout_s):  # shared by every waiting caller
            return await self._open()

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(
            lambda: _Protocol(self.timeout_s), self.host, self.port
        )
        hello: list[tuple[Any, ...]] = []
        if self.password is not None:
            auth = ("AUTH", self.username, self.password) if self.username else None
            hello.append(auth or ("AUTH", self.password))
        if self.db:
            hello.append(("SELECT", self.db))
        try:
            for command in hello:  # before any other command: nothing else is queued yet
                future = loop.create_future()
                proto.expect(future)
                assert proto.transport is not None
                proto.transport.write(encode(command))
                await future
        except BaseException:
            if proto.transport is not None:
                proto.transport.close()
            raise
        return proto

    async def call(self, *args: Any) -> Any:
        proto = await self._connection()
        if len(proto.waiting) >= MAX_PENDING:
            raise ConnectionError("too many commands waiting")
        future = asyncio.get_running_loop().create_future()
        proto.expect(future)
        self._buffer.append(encode(args))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush, proto)
        return await future

    def _flush(self, proto: _Protocol) -> None:
        self._flush_scheduled = False
        data, self._buffer = b"".join(self._buffer), []
        if proto.transport is None or proto.lost:
            proto._fail(ConnectionError("connection lost"))
            return
        proto.transport.write(data)

    async def evalsha(self, sha: str, script: bytes, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, and the script loaded first when the server does not know it yet."""
        try:
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)
        except ReplyErrorFromServer as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self.call("SCRIPT", "LOAD", script)
        return await self.call("EVALSHA", sha, len(keys), *keys, *args)

    def close(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()
