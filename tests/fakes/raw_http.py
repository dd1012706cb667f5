"""A raw HTTP/1.1 upstream on 127.0.0.1 for the transport's tests, run in the test's own loop:
each request goes to a handler that writes whatever it likes (an endless head, a gzip bomb, a
close instead of an answer) and says whether the connection stays open. It counts connections
opened, open now and the most open at once, so pool bounds are checked at the upstream."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

MAX_HEAD = 64 * 1024


@dataclass
class RawRequest:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    connection: int  # which connection (1-based, in the order opened)
    index: int  # which request on that connection (1-based)
    peer: int = 0  # the port the connection came from (a proxy's outgoing socket)


Handler = Callable[[RawRequest, asyncio.StreamWriter], Awaitable[bool]]


def answer(status: int = 200, body: bytes = b"{}", headers: dict[str, str] | None = None) -> bytes:
    head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in (headers or {"Content-Type": "application/json"}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def ok(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
    writer.write(answer(body=b'{"ok": true}'))
    return True


@dataclass
class RawUpstream:
    handler: Handler = ok
    tls: ssl.SSLContext | None = None
    opened: int = 0
    open_now: int = 0
    most_open: int = 0
    requests: list[RawRequest] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def url(self, path: str = "/v1/chat") -> str:
        scheme = "https" if self.tls else "http"
        host = "localhost" if self.tls else "127.0.0.1"
        return f"{scheme}://{host}:{self.port}{path}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.opened += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        self._writers.add(writer)
        number, index = self.opened, 0
        peer = int(writer.get_extra_info("peername")[1])
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                    return
                if len(head) > MAX_HEAD:
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                index += 1
                request = RawRequest(method, target, headers, body, number, index, peer)
                self.requests.append(request)
                keep = await self.handler(request, writer)
                await writer.drain()
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self.open_now -= 1
            self._writers.discard(writer)
            writer.close()
