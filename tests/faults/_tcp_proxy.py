"""A TCP relay on 127.0.0.1 that a test can break and mend: `cut()` closes every open
connection and refuses new ones (the database is unreachable), `mend()` listens again on the
same port. Runs on its own event loop thread."""

from __future__ import annotations

import asyncio
import contextlib

from tests.fakes._server import ThreadLoop, free_port


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._tl = ThreadLoop()
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    def mend(self) -> TcpProxy:
        async def go() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

        self._tl.call(go())
        return self

    def cut(self) -> None:
        async def go() -> None:
            if self._server is not None:
                self._server.close()
                self._server = None
            for writer in list(self._writers):
                with contextlib.suppress(OSError):
                    writer.transport.abort()
            self._writers.clear()

        self._tl.call(go())

    def stop(self) -> None:
        self.cut()
        self._tl.stop()
