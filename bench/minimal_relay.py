"""The yardstick: a minimal hand-written relay with no features.

A raw ASGI app, one pooled aiohttp ClientSession, orjson, under uvicorn with uvloop + httptools.
POST /v1/chat/completions is forwarded to --upstream as is (streaming or not: streamed bytes are
relayed as they arrive); GET /health answers 200. No auth, no routing, no retries, no accounting:
what any Python relay has to pay at the least, so relaygate's overhead can be read against it.
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
import orjson

Scope = dict[str, Any]

_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
_HEALTH = b'{"status":"healthy"}'
_NOT_FOUND = b'{"error":{"message":"not found","type":"invalid_request_error","code":null}}'
_BAD = b'{"error":{"message":"bad json","type":"invalid_request_error","code":null}}'
_UPSTREAM = b'{"error":{"message":"upstream failed","type":"server_error","code":null}}'


class MinimalRelay:
    def __init__(self, upstream: str, api_key: str) -> None:
        self.url = upstream.rstrip("/") + "/chat/completions"
        self.headers = {"content-type": "application/json", "authorization": f"Bearer {api_key}"}
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        path, method = scope["path"], scope["method"]
        if method == "POST" and path == "/v1/chat/completions":
            await self.chat(receive, send)
        elif method == "GET" and path == "/health":
            await _answer(send, 200, _HEALTH)
        else:
            await _answer(send, 404, _NOT_FOUND)

    async def lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
                self.session = aiohttp.ClientSession(
                    connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.session is not None:
                    await self.session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def chat(self, receive: Any, send: Any) -> None:
        parts = []
        while True:
            message = await receive()
            parts.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        raw = b"".join(parts)
        try:
            stream = bool(orjson.loads(raw).get("stream"))
        except (orjson.JSONDecodeError, AttributeError):
            await _answer(send, 400, _BAD)
            return
        assert self.session is not None
        started = False
        try:
            async with self.session.post(self.url, data=raw, headers=self.headers) as resp:
                if not stream or resp.status != 200:
                    await _answer(send, resp.status, await resp.read())
                    return
                await send({"type": "http.response.start", "status": 200, "headers": _SSE})
                started = True
                async for data in resp.content.iter_any():
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
        except (aiohttp.ClientError, OSError):
            if started:  # cut the stream short; the client sees no [DONE]
                await send({"type": "http.response.body", "body": b""})
            else:
                await _answer(send, 502, _UPSTREAM)


async def _answer(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _JSON})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9200)
    ap.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:9100/v1")
    ap.add_argument("--api-key", default="sk-minimal")
    args = ap.parse_args()
    import uvicorn

    uvicorn.run(
        MinimalRelay(args.upstream, args.api_key),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        backlog=4096,
    )


if __name__ == "__main__":
    main()
