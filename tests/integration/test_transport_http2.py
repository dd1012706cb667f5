"""SPEC §11a HTTP/2 end to end: `transport.http2: true` sends a provider's calls through the
gateway over HTTP/2 (the library transport, httpx with h2) to a local h2 upstream (hypercorn,
TLS with ALPN, a certificate of the test's CA given as `tls.ca_bundle`), streams included."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config

from tests.fakes._server import free_port
from tests.integration._transport import (
    CHAT,
    MODEL,
    Fakes,
    assert_keys_unblamed,
    config,
    post,
)

pytestmark = pytest.mark.usefixtures("no_env_proxy")


class H2Upstream:
    """An OpenAI-compatible chat upstream on hypercorn (h2 and HTTP/1.1 over TLS)."""

    def __init__(self, certfile: str, keyfile: str) -> None:
        self.port = free_port()
        self.config = Config()
        self.config.bind = [f"127.0.0.1:{self.port}"]
        self.config.certfile, self.config.keyfile = certfile, keyfile
        self.config.accesslog = self.config.errorlog = None
        self.config.graceful_timeout = 1
        self.versions: list[str] = []
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.versions.append(scope["http_version"])
        if orjson.loads(body).get("stream"):
            headers = [(b"content-type", b"text/event-stream")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for word in ("one", " two"):
                chunk = {
                    "id": "c",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": MODEL,
                    "choices": [{"index": 0, "delta": {"content": word}}],
                }
                event = b"data: " + orjson.dumps(chunk) + b"\n\n"
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
            return
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": CHAT})

    async def start(self) -> H2Upstream:
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(
            serve(self.app, self.config, shutdown_trigger=self._stop.wait)  # type: ignore[arg-type]
        )
        for _ in range(200):  # up within 10 s
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return self
            await asyncio.sleep(0.05)
        raise RuntimeError("hypercorn did not start")

    async def stop(self) -> None:
        assert self._stop is not None and self._task is not None
        self._stop.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await self._task


def test_http2_through_the_gateway(
    fakes: Fakes, live_gateway: Any, ca: Any, ca_file: str, tmp_path: Path
) -> None:
    cert = ca.issue_cert("localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    upstream = fakes.start(H2Upstream(str(certfile), str(keyfile)))
    base = f"https://localhost:{upstream.port}/v1"
    data = config(base, ["sk-a"], transport={"http2": True}, tls={"ca_bundle": ca_file})
    gw = live_gateway(data)
    assert gw.gateway.transports.kinds["up"] == "library"
    for _ in range(3):
        reply = post(gw)
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == "hi"
    body = {"model": f"up/{MODEL}", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    with httpx.Client(trust_env=False, timeout=20) as client:
        streamed = client.post(gw.v1 + "/chat/completions", json=body, headers=gw.headers())
    assert streamed.status_code == 200
    assert '"one"' in streamed.text and '" two"' in streamed.text
    assert streamed.text.rstrip().endswith("data: [DONE]")
    assert upstream.versions == ["2"] * 4
    assert_keys_unblamed(gw)


def test_an_upstream_closing_its_http2_connection_never_blames_the_key(
    fakes: Fakes, live_gateway: Any, ca: Any, ca_file: str, tmp_path: Path
) -> None:
    """hypercorn ends an HTTP/2 connection after `keep_alive_max_requests` requests (GOAWAY),
    as real upstreams do; the calls it cuts are the way's failure: tried again, never the key's
    (before, each cooled the key and clients got 503 no_available_keys)."""
    from concurrent.futures import ThreadPoolExecutor

    cert = ca.issue_cert("localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    upstream = H2Upstream(str(certfile), str(keyfile))
    upstream.config.keep_alive_max_requests = 3
    fakes.start(upstream)
    base = f"https://localhost:{upstream.port}/v1"
    data = config(base, ["sk-a"], transport={"http2": True}, tls={"ca_bundle": ca_file})
    data["retries"]["max_attempts"] = 4
    gw = live_gateway(data)
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: post(gw), range(48)))
    codes = [r.status_code for r in replies]
    assert 503 not in codes
    for reply in replies:
        if reply.status_code != 200:  # every attempt cut: the way's code, never the key's
            assert reply.json()["error"]["code"] == "upstream_transport_error", reply.text
    assert codes.count(200) >= 24  # hypercorn cuts streams in flight: some meet it 4 times
    assert len(upstream.versions) >= 48
    assert_keys_unblamed(gw)
