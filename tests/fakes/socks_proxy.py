"""A SOCKS5 proxy on 127.0.0.1 for the transport's tests (RFC 1928 CONNECT, with RFC 1929
user/password when given), run in the test's own loop; it notes the targets asked for."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field

from tests.fakes.connect_proxy import _pipe


@dataclass
class SocksProxy:
    user: str | None = None
    password: str | None = None
    asked: list[tuple[str, int]] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> SocksProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        creds = f"{self.user}:{self.password}@" if self.user else ""
        return f"socks5://{creds}127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=5)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            _, n = await reader.readexactly(2)
            methods = await reader.readexactly(n)
            want = 2 if self.user else 0
            if want not in methods:
                writer.write(b"\x05\xff")
                return
            writer.write(bytes([5, want]))
            if want == 2:
                _, ulen = await reader.readexactly(2)
                user = (await reader.readexactly(ulen)).decode()
                (plen,) = await reader.readexactly(1)
                password = (await reader.readexactly(plen)).decode()
                good = (user, password) == (self.user, self.password)
                writer.write(b"\x01\x00" if good else b"\x01\x01")
                if not good:
                    return
            _, _, _, atyp = await reader.readexactly(4)
            if atyp == 1:
                host = socket.inet_ntoa(await reader.readexactly(4))
            elif atyp == 3:
                (length,) = await reader.readexactly(1)
                host = (await reader.readexactly(length)).decode()
            else:
                return
            (port,) = struct.unpack("!H", await reader.readexactly(2))
            self.asked.append((host, port))
            up_reader, up_writer = await asyncio.open_connection(host, port)
            self._writers.add(up_writer)
            writer.write(b"\x05\x00\x00\x01" + socket.inet_aton("127.0.0.1") + b"\x00\x00")
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            return
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()
