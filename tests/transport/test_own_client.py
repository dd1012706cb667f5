"""The own HTTP/1.1 transport (transport/own.py) against a scripted raw server: bodies by
Content-Length, chunks or the end of the connection, gzip and deflate, keep-alive reuse and when a
connection must not be reused, answers cut short, garbage, the body limit, flow control of a big
stream, cancellation, what is sent (headers, no newline injection), and TLS."""

from __future__ import annotations

import asyncio
import gzip
import shutil
import ssl
import subprocess
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from relaygate.transport.options import TransportOptions
from relaygate.transport.own import (
    OwnTransport,
    UpstreamBodyTooLarge,
    UpstreamDisconnected,
    UpstreamProtocolError,
)

Reply = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]  # False: close the connection


class Server:
    """One asyncio server; `replies` answers the requests in order, across connections."""

    def __init__(self, replies: list[Reply], tls: ssl.SSLContext | None = None) -> None:
        self.replies = replies
        self.requests: list[bytes] = []
        self.connections = 0
        self.tls = tls
        self.handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for task in self.handlers:
            task.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}/v1/chat/completions"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            while self.replies:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                if not await self.replies.pop(0)(request, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.handlers.discard(task)


def raw(data: bytes, keep: bool = True, pause: float = 0.0) -> Reply:
    async def reply(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(data)
        await writer.drain()
        if pause:
            await asyncio.sleep(pause)
        return keep

    return reply


def ok(body: bytes, *extra: bytes, keep: bool = True) -> Reply:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % len(body) + b"".join(extra)
    return raw(head + b"\r\n" + body, keep)


def chunked(*pieces: bytes, end: bool = True) -> bytes:
    out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    for piece in pieces:
        out += b"%x\r\n%s\r\n" % (len(piece), piece)
    return out + (b"0\r\n\r\n" if end else b"")


async def post(client: OwnTransport, server: Server, body: bytes = b"{}", **headers: str):
    return await client.request("POST", server.url, headers, body)


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_content_length_and_keep_alive_reuse_one_connection():
    async def main() -> None:
        async with Server([ok(b'{"a":1}'), ok(b'{"b":2}', b"X-Thing: yes\r\n")]) as server:
            client = OwnTransport()
            first = await post(client, server, authorization="Bearer k")
            assert first.status == 200 and await first.read(1000) == b'{"a":1}'
            first.close()
            second = await post(client, server)
            assert second.headers["x-thing"] == "yes" and second.headers["X-THING"] == "yes"
            assert await second.read(1000) == b'{"b":2}'
            second.close()
            assert server.connections == 1
            await client.aclose()

    run(main())


def test_what_is_sent():
    async def main() -> None:
        async with Server([ok(b"{}")]) as server:
            client = OwnTransport()
            resp = await post(client, server, b'{"x":1}', **{"content-type": "application/json"})
            resp.close()
            head, _, body = server.requests[0].partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            assert lines[0] == b"POST /v1/chat/completions HTTP/1.1"
            assert set(lines[1:]) == {
                b"Host: 127.0.0.1:%d" % server.port,
                b"content-type: application/json",
                b"Accept: */*",
                b"Accept-Encoding: gzip, deflate",
                b"Content-Length: 7",
            }
            assert body == b'{"x":1}'
            with pytest.raises(ValueError):
                await post(client, server, authorization="Bearer k\r\nX-Evil: 1")
            await client.aclose()

    run(main())


def test_chunked_and_eof_delimited_bodies():
    async def main() -> None:
        replies = [
            raw(chunked(b"hel", b"lo")),
            raw(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", keep=False),
            ok(b"fresh"),
        ]
        async with Server(replies) as server:
            client = OwnTransport()
            for expected in (b"hello", b"until the end", b"fresh"):
                resp = await post(client, server)
                assert await resp.read(1000) == expected
                resp.close()
            assert server.connections == 2  # the close-delimited answer ended its connection
            await client.aclose()

    run(main())


def test_gzip_and_deflate_answers_are_decoded():
    async def main() -> None:
        text = b'{"choices":[]}' * 50
        replies = [
            ok(gzip.compress(text), b"Content-Encoding: gzip\r\n"),
            ok(zlib.compress(text), b"Content-Encoding: deflate\r\n"),
            ok(b"not gzip at all", b"Content-Encoding: gzip\r\n"),
        ]
        async with Server(replies) as server:
            client = OwnTransport()
            for _ in range(2):
                resp = await post(client, server)
                assert await resp.read(10_000) == text
                resp.close()
            resp = await post(client, server)
            with pytest.raises(UpstreamProtocolError):
                await resp.read(10_000)
            resp.close()
            await client.aclose()

    run(main())


def test_cut_answers_fail_and_are_not_reused():
    async def main() -> None:
        replies = [
            raw(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this", keep=False),
            raw(chunked(b"data: 1\n\n", end=False), keep=False),
            raw(b"HTTP/1.1 200 OK\r\nContent-Le", keep=False),
            raw(b"SMTP ready\r\n\r\n", keep=False),
            ok(b"fine"),
        ]
        async with Server(replies) as server:
            client = OwnTransport()
            resp = await post(client, server)
            with pytest.raises(UpstreamDisconnected):
                await resp.read(1000)
            resp.close()
            resp = await post(client, server)
            with pytest.raises(UpstreamDisconnected):
                async for _ in resp.iter_chunks():
                    pass
            resp.close()
            with pytest.raises(UpstreamDisconnected):
                await post(client, server)
            with pytest.raises(UpstreamProtocolError):
                await post(client, server)
            resp = await post(client, server)
            assert await resp.read(100) == b"fine"
            resp.close()
            assert server.connections == 5
            await client.aclose()

    run(main())


def test_an_idle_connection_the_server_closed_is_not_reused():
    async def main() -> None:
        async with Server([ok(b"one", keep=False), ok(b"two")]) as server:
            client = OwnTransport()
            resp = await post(client, server)
            assert await resp.read(100) == b"one"
            resp.close()
            await asyncio.sleep(0.05)  # the server has closed it by now
            resp = await post(client, server)
            assert await resp.read(100) == b"two"
            resp.close()
            assert server.connections == 2
            await client.aclose()

    run(main())


def test_the_body_limit_and_an_unread_answer_close_the_connection():
    big = 3 * 1024 * 1024  # past the high water: the rest waits on the socket

    async def main() -> None:
        replies = [ok(b"x" * big), ok(b"y" * big), ok(b"z" * 5000), ok(b"w" * 10), ok(b"!")]
        async with Server(replies) as server:
            client = OwnTransport()
            resp = await post(client, server)
            with pytest.raises(UpstreamBodyTooLarge):
                await resp.read(4096)
            resp.close()
            resp = await post(client, server)
            resp.close()  # not read to its end: the connection still carries its body
            assert server.connections == 2
            resp = await post(client, server)  # all there, only too big: the connection stays
            with pytest.raises(UpstreamBodyTooLarge):
                await resp.read(4096)
            resp.close()
            resp = await post(client, server)
            resp.close()
            resp = await post(client, server)
            assert await resp.read(10) == b"!"
            resp.close()
            assert server.connections == 3
            await client.aclose()

    run(main())


def test_a_big_stream_is_relayed_whole_with_reading_paused_in_between():
    piece = b"data: " + b"x" * 60_000 + b"\n\n"

    async def main() -> None:
        async with Server([raw(chunked(*[piece] * 60)), ok(b"after")]) as server:
            client = OwnTransport()
            resp = await post(client, server)
            got = 0
            async for data in resp.iter_chunks():
                got += len(data)
                await asyncio.sleep(0.001)  # a slow reader: the buffer reaches its high water
            assert got == len(piece) * 60
            resp.close()
            resp = await post(client, server)
            assert await resp.read(100) == b"after"
            resp.close()
            assert server.connections == 1
            await client.aclose()

    run(main())


def test_cancelled_while_waiting_for_the_answer_the_connection_is_dropped():
    async def main() -> None:
        async with Server([raw(b"", pause=5), ok(b"next")]) as server:
            client = OwnTransport()
            task = asyncio.create_task(post(client, server))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            resp = await post(client, server)
            assert await resp.read(100) == b"next"
            resp.close()
            assert server.connections == 2
            await client.aclose()

    run(main())


def test_refused_connections_are_os_errors():
    async def main() -> None:
        client = OwnTransport()
        with pytest.raises(OSError):
            await client.request("POST", "http://127.0.0.1:1/v1/chat/completions", {}, b"{}")
        with pytest.raises(ValueError):
            await client.request("POST", "ftp://example.com/x", {}, b"{}")

    run(main())


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")
def test_tls(tmp_path: Path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)

    async def main() -> None:
        async with Server([ok(b"secret"), ok(b"again")], tls=server_tls) as server:
            untrusting = OwnTransport()  # the system's trust store does not know this cert
            with pytest.raises(ssl.SSLError):
                await post(untrusting, server)
            trusting = OwnTransport(tls=ssl.create_default_context(cafile=str(cert)))
            for expected in (b"secret", b"again"):
                resp = await post(trusting, server)
                assert await resp.read(100) == expected
                resp.close()
            assert server.connections == 1  # kept alive (the failed handshake never got served)
            await trusting.aclose()

    run(main())


def test_a_host_name_is_resolved_once_and_its_addresses_tried_in_turn():
    async def main() -> None:
        async with Server([ok(b"one", keep=False), ok(b"two")]) as server:
            client = OwnTransport()
            url = f"http://localhost:{server.port}/v1/chat/completions"  # ::1 may refuse first
            for expected in (b"one", b"two"):
                resp = await client.request("POST", url, {}, b"{}")
                assert await resp.read(100) == expected
                resp.close()
                await asyncio.sleep(0.02)
            assert b"Host: localhost:%d" % server.port in server.requests[0]
            assert list(client._dns) == [("localhost", server.port)]
            await client.aclose()

    run(main())


def test_idle_connections_past_the_keepalive_are_closed_even_when_quiet():
    async def main() -> None:
        async with Server([ok(b"one"), ok(b"two")]) as server:
            client = OwnTransport(TransportOptions(keepalive_s=0.05))
            resp = await post(client, server)
            assert await resp.read(100) == b"one"
            resp.close()
            assert sum(len(v) for v in client._idle.values()) == 1
            await asyncio.sleep(0.15)  # no traffic: the sweep closes it
            assert client._idle == {} and client._sweep is None
            resp = await post(client, server)
            assert await resp.read(100) == b"two"
            resp.close()
            assert server.connections == 2
            await client.aclose()

    run(main())


def test_an_upstream_url_with_a_space_or_newline_is_refused():
    async def main() -> None:
        client = OwnTransport()
        for url in ("http://127.0.0.1:1/v1/chat completions", "http://127.0.0.1:1/v1\r\nX: y"):
            with pytest.raises(ValueError):
                await client.request("POST", url, {}, b"{}")

    run(main())
