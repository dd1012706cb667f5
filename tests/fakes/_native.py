"""What the native fake upstreams (Anthropic, Gemini, Ollama) share: a scripted `Reply` per upstream
key (queued, the last one repeats), recorded requests, the server thread, and the answer text.

Each fake speaks its provider's exact wire format (protocols.md §9); this module knows none."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes._scripted import Scripted


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


class FakeUpstream(Scripted[Reply]):
    """Scripting and recording; subclasses add routes and speak the wire format."""

    def __init__(self) -> None:
        super().__init__(Reply())


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
