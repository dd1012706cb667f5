"""What the native fake upstreams (Anthropic, Gemini, Ollama) share: a scripted `Reply` per upstream
key (queued, the last one repeats), recorded requests, the server thread, and the answer text.

Each fake speaks its provider's exact wire format (protocols.md §9); this module knows none."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes._server import AiohttpServer


@dataclass
class Reply:
    status: int = 200
    error: dict[str, Any] | str | None = None  # the error body (JSON object, or raw text)
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # before the status line
    text: str | None = None  # None: "Echo: <last user text>"
    tool_calls: list[dict[str, Any]] | None = None  # [{"name", "arguments" (a JSON string)}]
    thinking: str | None = None  # reasoning text streamed before the answer
    usage: tuple[int, int] | None = None  # native (input, output) counts; default computed
    cached: int = 0  # cached input tokens, reported the provider's way
    finish: str | None = None  # the native finish reason; default by content
    inband_error_after: int | None = None  # stream: a native in-band error after N text pieces
    cut_after: int | None = None  # stream: the body ends after N text pieces, unfinished
    chunk_delay_s: float = 0.0
    crlf: bool = False  # line ends \r\n (SSE fakes)
    split_writes: bool = False  # write each event in two TCP pieces, split mid-line
    pings: bool = True  # Anthropic: ping events between blocks


@dataclass
class Recorded:
    key: str | None
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: dict[str, Any]
    at: float


class FakeUpstream:
    """Scripting and recording; subclasses add routes and speak the wire format."""

    def __init__(self) -> None:
        self._scripts: dict[str | None, deque[Reply]] = {}
        self.default = Reply()
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._server = AiohttpServer(self._app)

    @property
    def base(self) -> str:
        return self._server.base

    def start(self) -> Any:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def script(self, key: str | None, *replies: Reply) -> None:
        with self._lock:
            self._scripts[key] = deque(replies)

    def calls(self, key: str | None = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if key is None or r.key == key]

    def _next(self, key: str | None) -> Reply:
        with self._lock:
            queue = self._scripts.get(key)
            if not queue:
                return self.default
            return queue.popleft() if len(queue) > 1 else queue[0]

    def _record(self, request: web.Request, key: str | None, body: Any) -> None:
        with self._lock:
            self.requests.append(
                Recorded(
                    key,
                    request.path,
                    dict(request.query),
                    dict(request.headers),
                    body if isinstance(body, dict) else {},
                    time.time(),
                )
            )

    def _app(self) -> web.Application:
        raise NotImplementedError


async def read_json(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        return None


async def write(resp: web.StreamResponse, data: bytes, reply: Reply) -> None:
    if reply.chunk_delay_s:
        await asyncio.sleep(reply.chunk_delay_s)
    if reply.split_writes and len(data) > 4:
        half = len(data) // 2
        await resp.write(data[:half])
        await asyncio.sleep(0.002)
        await resp.write(data[half:])
    else:
        await resp.write(data)


def answer_pieces(reply: Reply, last_user_text: str) -> list[str]:
    """The answer as streamed pieces: one per word, spaces kept in front."""
    text = reply.text if reply.text is not None else f"Echo: {last_user_text}"
    if not text:
        return []
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def count_words(value: Any) -> int:
    """A stand-in token count: the words of every string inside a JSON value."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, dict):
        return sum(count_words(v) for v in value.values())
    if isinstance(value, list):
        return sum(count_words(v) for v in value)
    return 0
