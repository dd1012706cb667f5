"""A forward proxy on 127.0.0.1 for the transport's tests, run in the test's own loop: CONNECT
tunnels and absolute-form plain HTTP requests, with Basic proxy credentials when given. It can
also refuse every request (403) or hang without a word, and it notes what it was asked."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

Mode = Literal["serve", "refuse", "hang"]


@dataclass
class ConnectProxy:
    user: str | None = None
    password: str | None = None
    mode: Mode = "serve"
    asked: list[tuple[str, str]] = field(default_factory=list)  # (method, target)
    auth_seen: list[str | None] = field(default_factory=list)
    out_ports: set[int] = field(default_factory=set)  # its sockets to upstreams (their ports)
    _server: asyncio.Server | None = None
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> ConnectProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        creds = f"{self.user}:{self.password}@" if self.user else ""
        return f"http://{creds}127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        self._stopping.set()
        for writer in list(self._writers):
            writer.close()
        if self._tasks:  # each ends once its connections are closed
            await asyncio.wait(list(self._tasks), timeout=5)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._server.wait_closed()

    def _authorized(self, headers: dict[str, str]) -> bool:
        if self.user is None:
            return True
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return headers.get("proxy-authorization") == f"Basic {token}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            self.asked.append((method, target))
            self.auth_seen.append(headers.get("proxy-authorization"))
            if self.mode == "hang":
                await self._stopping.wait()
                return
            if self.mode == "refuse":
                writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            if not self._authorized(headers):
                writer.write(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                    b'Proxy-Authenticate: Basic realm="t"\r\nContent-Length: 0\r\n\r\n'
                )
                return
            if method == "CONNECT":
                host, port = target.rsplit(":", 1)
                up_reader, up_writer = await asyncio.open_connection(host, int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:  # absolute form: the head goes on as it came, minus the proxy's header
                parts = urlsplit(target)
                up_reader, up_writer = await asyncio.open_connection(parts.hostname, parts.port)
                kept = [ln for ln in lines if not ln.lower().startswith("proxy-authorization")]
                up_writer.write("\r\n".join(kept).encode("latin-1"))
            self._writers.add(up_writer)
            self.out_ports.add(int(up_writer.get_extra_info("sockname")[1]))
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            return
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()
