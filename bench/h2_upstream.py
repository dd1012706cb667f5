"""An HTTP/2 mock OpenAI upstream for the benchmark (the relaygate-h2 target, issue 16).

The answers of mock_upstream.py, imported from it (its Answers: the same chat completion, the
same streamed events, the same embeddings, the model-name tokens `ttfb<ms>`, `gap<ms>` and
`n<count>`), served as an ASGI app on hypercorn over TLS, ALPN offering h2 and http/1.1: a
provider that offers HTTP/2. The certificate and key are given (run.py writes a self-signed one
with the `openssl` CLI into its temp dir and hands the same file to relaygate as
`tls.ca_bundle`).

GET /health answers 200; GET /stats answers the POSTs served so far by HTTP version, e.g.
`{"2": 1000}`, so the bench can show that the relay really spoke HTTP/2. GETs are not counted.
It exits at once on SIGINT or SIGTERM.

Slower than mock_upstream.py (hypercorn and h2 are pure Python); run.py reports this mock's own
CPU a request beside the relay's so that a run can tell when the mock was the limit.

    .venv/bin/python bench/h2_upstream.py --port 9443 --certfile cert.pem --keyfile key.pem
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import Counter
from typing import Any

import orjson
from hypercorn.asyncio import serve
from hypercorn.config import Config
from mock_upstream import Answers, Behaviour, embeddings_body

_JSON = (b"content-type", b"application/json")
_SSE = (b"content-type", b"text/event-stream; charset=utf-8")
_REQUEST_ID = (b"x-request-id", b"req_bench")
_NOT_FOUND = b'{"error":{"message":"not found","type":"invalid_request_error","param":null}}'


class App:
    """The ASGI app: chat completions (whole and streamed) and embeddings, as the fast mock."""

    def __init__(self, answers: Answers) -> None:
        self.answers = answers
        self.versions: Counter[str] = Counter()  # POSTs by HTTP version ("1.1", "2")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["method"] == "GET":
            body = (
                orjson.dumps(dict(self.versions))
                if scope["path"] == "/stats"
                else b'{"status":"ok"}'
            )
            await _whole(send, 200, body)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        self.versions[scope["http_version"]] += 1
        path: str = scope["path"]
        try:
            req = orjson.loads(b"".join(chunks))
            model = str(req.get("model") or "mock")
        except (orjson.JSONDecodeError, AttributeError):
            await _whole(send, 400, b"{}")
            return
        if path.endswith("/chat/completions"):
            if req.get("stream"):
                options = req.get("stream_options")
                usage = bool(isinstance(options, dict) and options.get("include_usage"))
                await self.stream(send, model, usage)
            else:
                await _whole(send, 200, self.answers.plain_body(model))
        elif path.endswith("/embeddings"):
            await _whole(send, 200, embeddings_body(req))
        else:
            await _whole(send, 404, _NOT_FOUND)

    async def stream(self, send: Any, model: str, include_usage: bool) -> None:
        """As mock_upstream.py: the head and first events after the ttfb, then content events
        spaced by the gap."""
        behaviour = self.answers.behaviour(model)
        events = self.answers.events(model, include_usage)
        if behaviour.ttfb_s:
            await asyncio.sleep(behaviour.ttfb_s)
        headers = [_SSE, _REQUEST_ID]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        last = len(events) - 1
        for i, event in enumerate(events):
            await send({"type": "http.response.body", "body": event, "more_body": i != last})
            if behaviour.gap_s and 0 < i <= behaviour.chunks and i != last:
                await asyncio.sleep(behaviour.gap_s)


async def _whole(send: Any, status: int, body: bytes) -> None:
    headers = [_JSON, _REQUEST_ID, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9443)
    ap.add_argument("--certfile", required=True)
    ap.add_argument("--keyfile", required=True)
    ap.add_argument("--chunks", type=int, default=20, help="content chunks per streamed answer")
    ap.add_argument("--ttfb-ms", type=float, default=0.0, help="delay before a stream's first byte")
    ap.add_argument("--gap-ms", type=float, default=0.0, help="delay between streamed chunks")
    ap.add_argument(
        "--max-streams",
        type=int,
        default=1000,
        help="SETTINGS_MAX_CONCURRENT_STREAMS offered per connection (hypercorn's default: 100)",
    )
    ap.add_argument(
        "--max-requests",
        type=int,
        default=1_000_000_000,
        help="requests per connection before a GOAWAY (hypercorn's default: 1,000; httpx fails "
        "the streams in flight on it, so the bench's mock never sends one)",
    )
    ap.add_argument("--max-seconds", type=float, default=3600.0, help="exit after this long")
    args = ap.parse_args()
    app = App(Answers(Behaviour(args.chunks, args.ttfb_ms / 1000, args.gap_ms / 1000)))
    config = Config()
    config.bind = [f"{args.host}:{args.port}"]
    config.certfile, config.keyfile = args.certfile, args.keyfile
    config.alpn_protocols = ["h2", "http/1.1"]
    config.h2_max_concurrent_streams = args.max_streams
    config.keep_alive_timeout = 300  # idle connections stay between the bench's rounds
    config.keep_alive_max_requests = args.max_requests
    config.backlog = 4096
    config.accesslog = None
    config.graceful_timeout = 1

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        async def until_stopped() -> None:
            deadline = time.monotonic() + args.max_seconds
            while not stop.is_set() and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
            # nothing to keep: out at once (hypercorn's graceful shutdown logs a traceback for
            # the connections it cancels, which the bench would list as the mock's errors)
            sys.stdout.flush()
            os._exit(0)

        print(f"h2 mock upstream on https://{args.host}:{args.port}", flush=True)
        await serve(app, config, shutdown_trigger=until_stopped)  # type: ignore[arg-type]

    import uvloop

    uvloop.run(run())


if __name__ == "__main__":
    main()
