"""A fast mock OpenAI upstream for the benchmark: raw asyncio + httptools on uvloop.

POST /v1/chat/completions answers in OpenAI's wire format (protocols.md §1.3-1.4):
- non-streaming: a small fixed chat.completion with usage;
- streaming: a role chunk, N content chunks, a finish chunk, the usage chunk when
  stream_options.include_usage is set, then `data: [DONE]`, chunked transfer encoding.
POST /v1/embeddings answers one 1,536-float embedding per input with usage (protocols.md §14.1),
as text-embedding-3-small does; `encoding_format: base64` gets the same floats as base64.
GET /health (and anything else with GET) answers 200 so the bench can wait for readiness.

Delays: --ttfb-ms before the first byte of a streamed answer, --gap-ms between streamed chunks,
--chunks content chunks. A model name may override them per request with dash-separated tokens
`ttfb<ms>`, `gap<ms>`, `n<count>`, e.g. `gpt-4o-mini-ttfb200-gap100-n20`, so one mock process can
serve every scenario through any relay (relays pass the model name through).

It is written for speed (one parse of the body, precomputed answers, no framework) so that the
bench can show its ceiling and keep it far above any relay's.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import math
import re
import signal
import struct
import time
from dataclasses import dataclass

import httptools
import orjson

_CREATED = 1755133833
_USAGE = {"prompt_tokens": 12, "completion_tokens": 20, "total_tokens": 32}
_TOKEN = re.compile(r"(?:^|-)(ttfb|gap|n)(\d+)(?=-|$)")


@dataclass(frozen=True, slots=True)
class Behaviour:
    chunks: int
    ttfb_s: float
    gap_s: float


class Answers:
    """Precomputed answer bytes per (model, flags), built on first use."""

    def __init__(self, default: Behaviour) -> None:
        self.default = default
        self._behaviour: dict[str, Behaviour] = {}
        self._plain_body: dict[str, bytes] = {}
        self._plain: dict[str, bytes] = {}
        self._events: dict[tuple[str, bool], list[bytes]] = {}
        self._stream: dict[tuple[str, bool], list[bytes]] = {}

    def behaviour(self, model: str) -> Behaviour:
        found = self._behaviour.get(model)
        if found is None:
            over = {k: int(v) for k, v in _TOKEN.findall(model)}
            d = self.default
            found = Behaviour(
                chunks=over.get("n", d.chunks),
                ttfb_s=over["ttfb"] / 1000 if "ttfb" in over else d.ttfb_s,
                gap_s=over["gap"] / 1000 if "gap" in over else d.gap_s,
            )
            if len(self._behaviour) < 1000:
                self._behaviour[model] = found
        return found

    def plain_body(self, model: str) -> bytes:
        """The JSON body of a whole (non-streamed) answer."""
        found = self._plain_body.get(model)
        if found is None:
            found = orjson.dumps(
                {
                    "id": "chatcmpl-bench0000000000000000000000000",
                    "object": "chat.completion",
                    "created": _CREATED,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {
                                "role": "assistant",
                                "content": "Hi there! How can I help you today?",
                                "refusal": None,
                                "annotations": [],
                            },
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": _USAGE,
                    "service_tier": "default",
                    "system_fingerprint": None,
                }
            )
            if len(self._plain_body) < 1000:
                self._plain_body[model] = found
        return found

    def plain(self, model: str) -> bytes:
        """A whole answer as HTTP/1.1 bytes (head and body)."""
        found = self._plain.get(model)
        if found is None:
            body = self.plain_body(model)
            head = (
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"x-request-id: req_bench\r\ncontent-length: %d\r\n\r\n" % len(body)
            )
            found = head + body
            if len(self._plain) < 1000:
                self._plain[model] = found
        return found

    def events(self, model: str, include_usage: bool) -> list[bytes]:
        """The server-sent events of one streamed answer (`data: ...\\n\\n` each): the role
        chunk, `n` content chunks, the finish chunk, the usage chunk if asked, `[DONE]`."""
        key = (model, include_usage)
        found = self._events.get(key)
        if found is not None:
            return found
        n = self.behaviour(model).chunks
        base = {
            "id": "chatcmpl-bench0000000000000000000000000",
            "object": "chat.completion.chunk",
            "created": _CREATED,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": None,
        }
        extra = {"usage": None} if include_usage else {}
        deltas: list[tuple[dict[str, object], str | None]] = [
            ({"role": "assistant", "content": "", "refusal": None}, None)
        ]
        deltas += [({"content": f" word{i}"}, None) for i in range(n)]
        deltas.append(({}, "stop"))
        events = [
            orjson.dumps(
                {
                    **base,
                    "choices": [{"index": 0, "delta": d, "finish_reason": fr}],
                    **extra,
                }
            )
            for d, fr in deltas
        ]
        if include_usage:
            events.append(orjson.dumps({**base, "choices": [], "usage": _USAGE}))
        events.append(b"[DONE]")
        found = [b"data: " + e + b"\n\n" for e in events]
        if len(self._events) < 1000:
            self._events[key] = found
        return found

    def stream(self, model: str, include_usage: bool) -> list[bytes]:
        """The HTTP chunks of one streamed answer: [head + first event, events..., tail]."""
        key = (model, include_usage)
        found = self._stream.get(key)
        if found is not None:
            return found
        chunks = [_chunk(e) for e in self.events(model, include_usage)]
        head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"x-request-id: req_bench\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        chunks[0] = head + chunks[0]
        chunks[-1] += b"0\r\n\r\n"
        if len(self._stream) < 1000:
            self._stream[key] = chunks
        return chunks


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _plain_answer(status: bytes, body: bytes) -> bytes:
    head = b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    return head % (status, len(body)) + body


_HEALTH = _plain_answer(b"200 OK", b'{"status":"ok"}')
_NOT_FOUND = _plain_answer(
    b"404 Not Found",
    b'{"error":{"message":"not found","type":"invalid_request_error","param":null,"code":null}}',
)
_DIMS = 1536
_FLOATS = [round(math.sin(i) / 8, 6) for i in range(_DIMS)]
_B64 = base64.b64encode(struct.pack(f"<{_DIMS}f", *_FLOATS)).decode()


def embeddings_body(req: dict[str, object]) -> bytes:
    """The embeddings answer's JSON body: one vector per input, usage by the input's size."""
    given = req.get("input")
    inputs = given if isinstance(given, list) else [given]
    vector: object = _B64 if req.get("encoding_format") == "base64" else _FLOATS
    data = [{"object": "embedding", "index": i, "embedding": vector} for i in range(len(inputs))]
    tokens = max(1, len(orjson.dumps(given)) // 4)
    body = {
        "object": "list",
        "data": data,
        "model": str(req.get("model") or "mock"),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return orjson.dumps(body)


def embeddings_answer(req: dict[str, object]) -> bytes:
    """The embeddings answer for a request, as HTTP/1.1 bytes."""
    return _plain_answer(b"200 OK", embeddings_body(req))


_BAD = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class MockProtocol(asyncio.Protocol):
    """One keep-alive connection. Requests on a connection are answered in order: while a stream
    is being written, later requests wait in `pending`."""

    __slots__ = ("answers", "body", "busy", "parser", "pending", "transport", "url")

    def __init__(self, answers: Answers) -> None:
        self.answers = answers
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.busy = False
        self.pending: list[tuple[bytes, bytes, bytes, bool]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence no isinstance check
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(_BAD)
                self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        request = (method, self.url, b"".join(self.body), self.parser.should_keep_alive())
        if self.busy:
            self.pending.append(request)
        else:
            self.handle(*request)

    def handle(self, method: bytes, url: bytes, body: bytes, keep_alive: bool) -> None:
        t = self.transport
        if t is None:
            return
        if method == b"POST" and url.endswith(b"/chat/completions"):
            try:
                req = orjson.loads(body)
                model = str(req.get("model") or "mock")
            except (orjson.JSONDecodeError, AttributeError):
                t.write(_BAD)
                t.close()
                return
            if req.get("stream"):
                options = req.get("stream_options")
                usage = bool(isinstance(options, dict) and options.get("include_usage"))
                self.busy = True
                asyncio.get_running_loop().create_task(self.stream(model, usage, keep_alive))
                return
            t.write(self.answers.plain(model))
        elif method == b"POST" and url.endswith(b"/embeddings"):
            try:
                req = orjson.loads(body)
                answer = embeddings_answer(req)
            except (orjson.JSONDecodeError, AttributeError):
                t.write(_BAD)
                t.close()
                return
            t.write(answer)
        elif method == b"GET":
            t.write(_HEALTH)
        else:
            t.write(_NOT_FOUND)
        if not keep_alive:
            t.close()

    async def stream(self, model: str, include_usage: bool, keep_alive: bool) -> None:
        behaviour = self.answers.behaviour(model)
        chunks = self.answers.stream(model, include_usage)
        try:
            if behaviour.ttfb_s:
                await asyncio.sleep(behaviour.ttfb_s)
            last = len(chunks) - 1
            for i, chunk in enumerate(chunks):
                t = self.transport
                if t is None or t.is_closing():
                    return
                t.write(chunk)
                # content chunks are spaced by the gap; the first one comes after the ttfb
                if behaviour.gap_s and 0 < i <= behaviour.chunks and i != last:
                    await asyncio.sleep(behaviour.gap_s)
        finally:
            self.busy = False
        if not keep_alive and self.transport is not None:
            self.transport.close()
            return
        while self.pending and not self.busy:
            self.handle(*self.pending.pop(0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9100)
    ap.add_argument("--chunks", type=int, default=20, help="content chunks per streamed answer")
    ap.add_argument("--ttfb-ms", type=float, default=0.0, help="delay before a stream's first byte")
    ap.add_argument("--gap-ms", type=float, default=0.0, help="delay between streamed chunks")
    ap.add_argument("--max-seconds", type=float, default=3600.0, help="exit after this long")
    args = ap.parse_args()
    answers = Answers(Behaviour(args.chunks, args.ttfb_ms / 1000, args.gap_ms / 1000))

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: MockProtocol(answers), args.host, args.port, backlog=4096, reuse_address=True
        )
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"mock upstream on http://{args.host}:{args.port} (pid ready)", flush=True)
        deadline = time.monotonic() + args.max_seconds
        while not stop.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
        server.close()

    import uvloop

    uvloop.run(serve())


if __name__ == "__main__":
    main()
