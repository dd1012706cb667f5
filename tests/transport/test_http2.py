"""The HTTP/2 transport alone (`http2: true`): against a local h2 server (hypercorn, TLS with ALPN,
a certificate from the test's own CA) the answer comes over HTTP/2, many requests share one
connection, gzip is decoded under the cap, and a CONNECT proxy with credentials carries it."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from hypercorn.asyncio import serve
from hypercorn.config import Config

from relaygate.transport import BodyTooLarge, RequestOptions
from relaygate.transport.http2 import Http2Transport
from relaygate.transport.options import TransportOptions
from tests.fakes._server import free_port

pytestmark = pytest.mark.usefixtures("no_env_proxy")
BIG = gzip.compress(bytes(8 << 20))
seen: list[tuple[str, str]] = []
peers: set[int] = set()  # the client ports /hold was called from: one per connection
held = asyncio.Event()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    seen.append((scope["http_version"], scope["path"]))
    if scope["path"] == "/hold":  # the head now, the body once the test lets go
        peers.add(scope["client"][1])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await held.wait()
        await send({"type": "http.response.body", "body": b"done"})
        return
    if scope["path"] == "/big":
        headers = [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": BIG})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b'{"echo": ' + body + b"}"})


@pytest.fixture
async def h2_server(ca: trustme.CA, tmp_path: Path) -> AsyncIterator[str]:
    cert = ca.issue_cert("localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    port = free_port()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.certfile, config.keyfile = str(certfile), str(keyfile)
    config.accesslog = config.errorlog = None
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    for _ in range(200):  # up within 10 s
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            break
        await asyncio.sleep(0.05)
    seen.clear()
    yield f"https://localhost:{port}"
    stop.set()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(10):
            await task


@pytest.fixture
async def h2(ca_file: str) -> AsyncIterator[Http2Transport]:
    transport = Http2Transport(
        TransportOptions(http2=True, ca_bundle=ca_file, max_body_bytes=1 << 20)
    )
    yield transport
    await transport.aclose()


async def test_answers_come_over_http2_on_one_connection(h2_server: str, h2) -> None:
    async def one(i: int) -> bytes:
        resp = await h2.request("POST", h2_server + "/v1/chat", {}, b"%d" % i)
        assert resp.http_version == "HTTP/2"
        try:
            return await resp.read(1 << 20)
        finally:
            resp.close()

    answers = await asyncio.gather(*(one(i) for i in range(20)))
    assert answers == [b'{"echo": %d}' % i for i in range(20)]
    assert {version for version, _ in seen} == {"2"}
    assert len(h2._clients) == 1


async def test_a_large_gzip_answer_stops_at_the_cap(h2_server: str, h2) -> None:
    resp = await h2.request("GET", h2_server + "/big", {}, None)
    with pytest.raises(BodyTooLarge):
        await resp.read(1 << 30)
    resp.close()


async def test_http2_through_a_connect_proxy(h2_server: str, h2, proxies) -> None:
    proxy = await proxies(user="h2", password="h2-pass")
    resp = await h2.request("POST", h2_server + "/p", {}, b"1", RequestOptions(proxy=proxy.url))
    assert resp.http_version == "HTTP/2" and await resp.read(100) == b'{"echo": 1}'
    resp.close()
    assert [m for m, _ in proxy.asked] == ["CONNECT"]


async def test_calls_past_one_connections_streams_open_another(h2_server: str, h2) -> None:
    """httpx carries at most 100 calls at once on one HTTP/2 connection and opens no second:
    250 open streams must not wait behind the first 100 (they leave on three connections)."""
    held.clear()
    peers.clear()
    opened = await asyncio.wait_for(
        asyncio.gather(*(h2.request("POST", h2_server + "/hold", {}, b"x") for _ in range(250))),
        timeout=15,
    )
    assert all(resp.http_version == "HTTP/2" for resp in opened)
    assert len(peers) == 3
    held.set()
    bodies = await asyncio.gather(*(resp.read(1 << 10) for resp in opened))
    assert set(bodies) == {b"done"}
    for resp in opened:
        resp.close()
    lanes = h2._clients[None]
    assert len(lanes) == 3 and all(lane.busy == 0 for lane in lanes)
