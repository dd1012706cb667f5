"""The own HTTP/1.1 transport's bounds (SPEC §11a) on raw local upstreams: at most
`max_connections_per_host` connections with a queue behind them (a connection handed to the
next request, a slot freed by a closed one, a cancelled waiter leaving no hole), the answer's
head bounded by count and bytes, the decoded body capped while streamed, no proxy spoken."""

from __future__ import annotations

import asyncio
import gzip

import pytest

from relaygate.transport import (
    BodyTooLarge,
    ConnectTimeout,
    HeadersTooLarge,
    ProxyError,
    RequestOptions,
)
from relaygate.transport.options import TransportOptions
from relaygate.transport.own import OwnTransport
from tests.fakes.raw_http import RawRequest, RawUpstream, answer


async def _post(client: OwnTransport, upstream: RawUpstream) -> bytes:
    resp = await client.request("POST", upstream.url(), {}, b"{}")
    try:
        return await resp.read(1 << 20)
    finally:
        resp.close()


async def test_a_burst_queues_behind_the_bound(upstreams) -> None:  # type: ignore[no-untyped-def]
    async def slow(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.02)
        writer.write(answer(body=b"ok"))
        return True

    upstream = await upstreams(handler=slow)
    client = OwnTransport(TransportOptions(max_connections_per_host=3))
    assert await asyncio.gather(*[_post(client, upstream) for _ in range(30)]) == [b"ok"] * 30
    assert upstream.opened == 3 and upstream.most_open == 3
    await client.aclose()


async def test_a_closed_connection_frees_its_slot_for_the_next(upstreams) -> None:  # type: ignore[no-untyped-def]
    async def once(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.02)
        writer.write(answer(body=b"ok", headers={"Connection": "close"}))
        return False

    upstream = await upstreams(handler=once)
    client = OwnTransport(TransportOptions(max_connections_per_host=1))
    assert await asyncio.gather(*[_post(client, upstream) for _ in range(4)]) == [b"ok"] * 4
    assert upstream.opened == 4 and upstream.most_open == 1
    await client.aclose()


async def test_a_cancelled_waiter_leaves_no_hole_and_the_wait_is_bounded(upstreams) -> None:  # type: ignore[no-untyped-def]
    gate = asyncio.Event()

    async def held(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        if len(upstream.requests) == 1:
            await gate.wait()
        writer.write(answer(body=b"ok"))
        return True

    upstream = await upstreams(handler=held)
    client = OwnTransport(TransportOptions(max_connections_per_host=1, connect_timeout_s=0.2))
    first = asyncio.create_task(_post(client, upstream))
    await asyncio.sleep(0.05)
    with pytest.raises(ConnectTimeout):  # the one connection is busy: the wait gives up
        await _post(client, upstream)
    waiter = asyncio.create_task(_post(client, upstream))
    await asyncio.sleep(0.05)
    waiter.cancel()
    gate.set()
    assert await first == b"ok"
    assert await _post(client, upstream) == b"ok"
    assert upstream.opened == 1  # the slot and the connection were handed on, not lost
    await client.aclose()


@pytest.mark.parametrize("shape", ["count", "bytes"])
async def test_the_head_is_bounded(upstreams, shape: str) -> None:  # type: ignore[no-untyped-def]
    async def endless(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(2000):
            writer.write(b"X-%d: v\r\n" % i if shape == "count" else b"x" * 100)
            if i % 100 == 0:
                await writer.drain()
        return False

    upstream = await upstreams(handler=endless)
    client = OwnTransport(TransportOptions(max_header_count=50, max_header_bytes=4096))
    with pytest.raises(HeadersTooLarge):
        await _post(client, upstream)
    await client.aclose()


async def test_a_streamed_gzip_bomb_stops_at_the_cap(upstreams) -> None:  # type: ignore[no-untyped-def]
    bomb = gzip.compress(bytes(64 << 20))

    async def gz(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(body=bomb, headers={"Content-Encoding": "gzip"}))
        return True

    upstream = await upstreams(handler=gz)
    client = OwnTransport(TransportOptions(max_body_bytes=1 << 20))
    resp = await client.request("POST", upstream.url(), {}, b"{}")
    got = 0
    with pytest.raises(BodyTooLarge):
        async for chunk in resp.iter_chunks():
            got += len(chunk)
    assert got <= 1 << 20
    resp.close()
    await client.aclose()


async def test_no_proxy_is_spoken() -> None:
    client = OwnTransport()
    with pytest.raises(ProxyError):
        await client.request(
            "GET", "http://127.0.0.1:1/", {}, None, RequestOptions(proxy="http://p:1")
        )
    await client.aclose()
