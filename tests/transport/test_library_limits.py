"""The library transport's bounds, alone (SPEC §11a), counted at a raw upstream: a burst of 5,000
requests opens at most the configured connections per host; idle connections close after the
keep-alive timeout; a gzip bomb stops at the body cap with memory bounded; an endless head or an
endless header line stops at the header bounds; a reused connection the upstream closed under a
request is sent once more on a new one, while a fresh connection closed is the upstream's fault."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
import zlib

import pytest

from relaygate.transport import BodyTooLarge, HeadersTooLarge, TransportError
from tests.fakes.raw_http import RawRequest, answer

pytestmark = pytest.mark.usefixtures("no_env_proxy")


async def call(transport, url, limit=1 << 20):
    resp = await transport.request("POST", url, {}, b"{}")
    try:
        return resp.status, await resp.read(limit)
    finally:
        resp.close()


async def test_a_burst_of_5000_opens_at_most_the_pool_bound(upstreams, transports) -> None:
    async def slowish(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.001)
        writer.write(answer(body=b'{"ok": true}'))
        return True

    upstream = await upstreams(handler=slowish)
    transport = transports(max_connections_per_host=8, connect_timeout_s=120)
    async with asyncio.timeout(120):
        results = await asyncio.gather(*(call(transport, upstream.url()) for _ in range(5000)))
    assert all(r == (200, b'{"ok": true}') for r in results)
    assert len(upstream.requests) == 5000
    assert upstream.opened <= 8 and upstream.most_open <= 8


async def test_idle_connections_close_after_the_keepalive_timeout(upstreams, transports) -> None:
    upstream = await upstreams()
    transport = transports(max_connections_per_host=20, keepalive_s=0.3)
    await asyncio.gather(*(call(transport, upstream.url()) for _ in range(50)))
    assert upstream.open_now > 1
    deadline = time.monotonic() + 10
    while upstream.open_now and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert upstream.open_now == 0  # the fds fall back after the burst
    assert await call(transport, upstream.url()) == (200, b'{"ok": true}')  # and new ones open


def _bomb(megabytes: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    return b"".join(packer.compress(zeros) for _ in range(megabytes)) + packer.flush()


async def test_a_gzip_bomb_stops_at_the_body_cap_with_memory_bounded(upstreams, transports) -> None:
    bomb = _bomb(512)  # 512 MiB of zeros in about half a MiB

    async def send_bomb(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(body=bomb, headers={"Content-Encoding": "gzip"}))
        return True

    upstream = await upstreams(handler=send_bomb)
    transport = transports(max_body_bytes=4 << 20)
    tracemalloc.start()
    try:
        resp = await transport.request("POST", upstream.url(), {}, b"{}")
        with pytest.raises(BodyTooLarge) as caught:
            await resp.read(1 << 30)
        resp.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40 << 20, f"peak {peak} bytes"
    assert caught.value.status == 502 and isinstance(caught.value, TransportError)
    streamed = await transport.request("POST", upstream.url(), {}, b"{}")
    with pytest.raises(BodyTooLarge):
        async for _ in streamed.iter_chunks():
            pass
    streamed.close()
    small = await transport.request("POST", upstream.url(), {}, b"{}")
    with pytest.raises(BodyTooLarge):  # the reader's own limit counts the decoded bytes too
        await small.read(1000)
    small.close()


async def test_a_gzip_answer_within_the_cap_arrives_decoded(upstreams, transports) -> None:
    text = b'{"choices": []}' * 1000

    async def gz(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        packer = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        body = packer.compress(text) + packer.flush()
        writer.write(answer(body=body, headers={"Content-Encoding": "gzip"}))
        return True

    upstream = await upstreams(handler=gz)
    assert await call(transports(), upstream.url()) == (200, text)
    assert "gzip" in upstream.requests[0].headers["accept-encoding"]


@pytest.mark.parametrize("shape", ["many-headers", "one-long-line"])
async def test_an_endless_head_stops_at_the_header_bounds(upstreams, transports, shape) -> None:
    async def endless(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        try:
            for i in range(200_000):  # bounded here; the client must stop long before
                if shape == "many-headers":
                    writer.write(f"X-H{i}: v\r\n".encode())
                else:
                    writer.write(b"X-Long: " if i == 0 else b"a" * 64)
                if i % 100 == 0:
                    await writer.drain()
        except ConnectionError:
            pass
        return False

    upstream = await upstreams(handler=endless)
    transport = transports(max_header_count=50, max_header_bytes=16 * 1024)
    started = time.monotonic()
    with pytest.raises(HeadersTooLarge) as caught:
        await call(transport, upstream.url())
    assert caught.value.status == 502
    assert time.monotonic() - started < 10


async def test_a_stale_keepalive_connection_is_sent_once_more(upstreams, transports) -> None:
    async def closes_second(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        if request.connection == 1 and request.index == 2:
            return False  # read it, then closed without a word: a keep-alive race lost
        writer.write(answer(body=b'{"n": %d}' % len(upstream.requests)))
        return True

    upstream = await upstreams(handler=closes_second)
    transport = transports()
    assert (await call(transport, upstream.url()))[0] == 200
    assert await call(transport, upstream.url()) == (200, b'{"n": 3}')
    assert [(r.connection, r.index) for r in upstream.requests] == [(1, 1), (1, 2), (2, 1)]


async def test_a_fresh_connection_closed_without_an_answer_is_the_upstreams_fault(
    upstreams, transports
) -> None:
    async def never(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        return False

    upstream = await upstreams(handler=never)
    with pytest.raises(ConnectionError) as caught:
        await call(transports(), upstream.url())
    assert not isinstance(caught.value, TransportError)  # counts against the key, as today
    assert len(upstream.requests) == 1  # not sent again
