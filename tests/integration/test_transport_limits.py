"""SPEC §11a bounds end to end, through the real gateway to raw fake upstreams, for both the own
HTTP/1.1 client and the library transport (`transport.kind`): a burst opens at most
`max_connections_per_host` connections (counted at the upstream) and they close after
`keepalive_s`; a gzip bomb, an endless head and a wait for a connection past
`connect_timeout_s` end in 502 / 504 with the error's code (a stream past the body cap ends
with an error event carrying it); a kept-alive connection the upstream
closed under a request is resent once on a new one. None of these blames the key."""

from __future__ import annotations

import asyncio
import gzip
import resource
import threading
import time
from typing import Any

import httpx
import orjson
import pytest

from tests.fakes.raw_http import RawRequest, RawUpstream, answer
from tests.integration._transport import (
    CHAT,
    MODEL,
    Fakes,
    assert_keys_unblamed,
    config,
    error_of,
    post,
)

pytestmark = pytest.mark.usefixtures("no_env_proxy")
KINDS = ["own", "library"]
BOMB = gzip.compress(bytes(128 << 20), compresslevel=9)  # 128 MiB of zeros in ~130 KiB


def _burst(gw: Any, n: int) -> list[int]:
    async def main() -> list[int]:
        body = {"model": f"up/{MODEL}", "messages": [{"role": "user", "content": "hi"}]}
        limits = httpx.Limits(max_connections=n)
        async with httpx.AsyncClient(trust_env=False, timeout=30, limits=limits) as client:
            calls = [
                client.post(gw.v1 + "/chat/completions", json=body, headers=gw.headers())
                for _ in range(n)
            ]
            return [r.status_code for r in await asyncio.gather(*calls)]

    return asyncio.run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_a_burst_opens_at_most_the_bound_and_idle_connections_close(
    fakes: Fakes, live_gateway: Any, kind: str
) -> None:
    async def slow(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.05)
        writer.write(answer(body=CHAT))
        return True

    upstream = fakes.start(RawUpstream(slow))
    transport = {"kind": kind, "max_connections_per_host": 4, "keepalive_s": 0.5}
    gw = live_gateway(config(upstream.url("/v1"), ["sk-a"], transport=transport))
    assert _burst(gw, 60) == [200] * 60
    assert 1 < upstream.most_open <= 4, upstream.most_open
    assert len(upstream.requests) == 60
    deadline = time.monotonic() + 10
    while upstream.open_now and time.monotonic() < deadline:  # idle ones close after 0.5 s
        time.sleep(0.05)
    assert upstream.open_now == 0
    assert_keys_unblamed(gw)


@pytest.mark.parametrize("kind", KINDS)
def test_a_gzip_bomb_is_a_502_with_memory_bounded(
    fakes: Fakes, live_gateway: Any, kind: str
) -> None:
    async def bomb(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        writer.write(answer(body=BOMB, headers=headers))
        return True

    upstream = fakes.start(RawUpstream(bomb))
    transport = {"kind": kind, "max_body_bytes": 1 << 20}
    gw = live_gateway(config(upstream.url("/v1"), ["sk-a"], transport=transport))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, the peak so far
    reply = post(gw)
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert reply.status_code == 502, reply.text
    assert error_of(reply)["code"] == "upstream_body_too_large"
    assert grew < 48 * 1024, f"the peak grew by {grew} KiB"  # the bomb would be 128 MiB
    assert_keys_unblamed(gw)


@pytest.mark.parametrize("shape", ["many headers", "one endless header"])
@pytest.mark.parametrize("kind", KINDS)
def test_an_endless_head_is_a_502(fakes: Fakes, live_gateway: Any, kind: str, shape: str) -> None:
    async def endless(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(5000):  # ~1 MiB of head, past every bound; the gateway hangs up first
            if shape == "many headers":
                writer.write(b"X-Filler-%d: %s\r\n" % (i, b"y" * 200))
            else:
                writer.write(b"X-Filler: " if i == 0 else b"y" * 200)
            if i % 100 == 0:
                await writer.drain()
        return False

    upstream = fakes.start(RawUpstream(endless))
    gw = live_gateway(config(upstream.url("/v1"), ["sk-a"], transport={"kind": kind}))
    reply = post(gw)
    assert reply.status_code == 502, reply.text
    assert error_of(reply)["code"] == "upstream_headers_too_large"
    assert_keys_unblamed(gw)


@pytest.mark.parametrize("kind", KINDS)
def test_the_connect_timeout_bounds_the_wait_for_a_connection(
    fakes: Fakes, live_gateway: Any, kind: str
) -> None:
    release = asyncio.Event()

    async def first_hangs(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        if len(upstream.requests) == 1:
            await asyncio.wait_for(release.wait(), 10)
        writer.write(answer(body=CHAT))
        return True

    upstream = fakes.start(RawUpstream(first_hangs))
    transport = {"kind": kind, "max_connections_per_host": 1, "connect_timeout_s": 0.4}
    data = config(upstream.url("/v1"), ["sk-a"], transport=transport)
    data["retries"]["max_attempts"] = 1
    gw = live_gateway(data)
    first: list[httpx.Response] = []
    holder = threading.Thread(target=lambda: first.append(post(gw)))
    holder.start()
    deadline = time.monotonic() + 5
    while not upstream.requests and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    reply = post(gw)  # the one connection is taken: it waits, then gives up
    took = time.monotonic() - started
    assert reply.status_code == 504, reply.text
    assert error_of(reply)["code"] == "upstream_connect_timeout"
    assert 0.3 < took < 4
    assert_keys_unblamed(gw)
    fakes.run(_set(release))
    holder.join(15)
    assert first and first[0].status_code == 200
    assert upstream.opened == 1


async def _set(event: asyncio.Event) -> None:
    event.set()


@pytest.mark.parametrize("kind", KINDS)
def test_a_stale_kept_alive_connection_is_resent_once(
    fakes: Fakes, live_gateway: Any, kind: str
) -> None:
    async def closes_when_reused(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        if request.index > 1:  # the upstream's keep-alive ran out just as this one came
            return False
        writer.write(answer(body=CHAT))
        return True

    upstream = fakes.start(RawUpstream(closes_when_reused))
    gw = live_gateway(config(upstream.url("/v1"), ["sk-a"], transport={"kind": kind}))
    for _ in range(3):
        reply = post(gw)
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-relaygate-attempts"] == "1"  # not an attempt of the loop's
    assert upstream.opened == 3  # the 2nd and 3rd met a closed one and went on a new one
    assert [r.index for r in upstream.requests] == [1, 2, 1, 2, 1]
    assert_keys_unblamed(gw)


@pytest.mark.parametrize("kind", KINDS)
def test_a_stream_past_the_body_cap_ends_with_an_error_event(
    fakes: Fakes, live_gateway: Any, kind: str
) -> None:
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL}
    event = b"data: " + orjson.dumps(
        {**chunk, "choices": [{"index": 0, "delta": {"content": "x" * 900}}]}
    )
    event += b"\n\n"

    async def endless_stream(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
        writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
        for _ in range(200):  # ~180 KiB, past the 64 KiB cap
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            await asyncio.sleep(0.001)
        writer.write(b"0\r\n\r\n")
        return False

    upstream = fakes.start(RawUpstream(endless_stream))
    transport = {"kind": kind, "max_body_bytes": 64 * 1024}
    gw = live_gateway(config(upstream.url("/v1"), ["sk-a"], transport=transport))
    body = {"model": f"up/{MODEL}", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    with httpx.Client(trust_env=False, timeout=20) as client:
        reply = client.post(gw.v1 + "/chat/completions", json=body, headers=gw.headers())
    assert reply.status_code == 200
    assert reply.text.count('"content":"xxx') >= 10  # the stream had begun
    assert '"code":"upstream_body_too_large"' in reply.text.replace(" ", "")
    assert "[DONE]" not in reply.text
    assert_keys_unblamed(gw)
