"""What a cache entry holds and how it travels: the answer as the core's chat.completion (JSON
bytes), whoever produced it (provider, model), its usage and what it cost (the money a hit
saves). A streamed answer is assembled into the same chat.completion from the core's chunks as
they are relayed (text, reasoning, tool calls, finish reason; usage from the relay), and any
entry is replayed as the core's chunks, so a whole answer can be served as a stream and a
stream as a whole answer, in any door's format.

A passed-through answer (a target that speaks the door's own format) is kept as the door's
bytes, marked `native`: it is served only as a whole answer to the same door; a stream request
finding one is a miss. Streams passed through are not stored."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from relaygate.providers._sse import EventTooLarge, SSEBuffer, parse_event
from relaygate.types import Usage

MAX_ASSEMBLED = 8 * 1024 * 1024  # a streamed answer larger than this is not stored


@dataclass(slots=True)
class Entry:
    body: bytes  # the core's chat.completion JSON, or the door's own answer when native
    provider: str
    model: str
    usage: Usage
    cost_usd: float
    native: bool = False

    def encode(self) -> bytes:
        u = self.usage
        head = {
            "p": self.provider,
            "m": self.model,
            "u": [u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.estimated],
            "c": self.cost_usd,
            "n": self.native,
        }
        return orjson.dumps(head) + b"\n" + self.body

    @classmethod
    def decode(cls, raw: bytes) -> Entry | None:
        """None for bytes that are not an entry (another version, a damaged value)."""
        head_raw, sep, body = raw.partition(b"\n")
        if not sep:
            return None
        try:
            head = orjson.loads(head_raw)
            p, c, cached, estimated = head["u"]
            usage = Usage(int(p), int(c), int(cached), bool(estimated))
            return cls(body, str(head["p"]), str(head["m"]), usage, float(head["c"]), head["n"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None

    def completion(self) -> dict[str, Any]:
        out: dict[str, Any] = orjson.loads(self.body)
        return out


@dataclass(slots=True)
class _Call:
    id: str | None = None
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class StreamAssembler:
    """The core's SSE bytes -> one chat.completion, or None when the stream is not one the cache
    keeps: more than one choice, an error event, no [DONE], or past MAX_ASSEMBLED."""

    __slots__ = (
        "_calls", "_done", "_finish", "_head", "_reasoning", "_size", "_spoiled", "_sse", "_text",
    )  # fmt: skip

    def __init__(self) -> None:
        self._sse = SSEBuffer()
        self._head: dict[str, Any] = {}
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._calls: dict[int, _Call] = {}
        self._finish: str | None = None
        self._done = False
        self._spoiled = False
        self._size = 0

    def feed(self, data: bytes) -> None:
        if self._spoiled or self._done:
            return
        self._size += len(data)
        if self._size > MAX_ASSEMBLED:
            self._spoiled = True
            return
        try:
            blocks = self._sse.feed(data)
        except EventTooLarge:
            self._spoiled = True
            return
        for block in blocks:
            _, payload = parse_event(block)
            if payload is None:
                continue
            if payload.startswith(b"[DONE]"):
                self._done = True
                return
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                self._spoiled = True
                return
            if not isinstance(chunk, dict) or "error" in chunk:
                self._spoiled = True
                return
            self._chunk(chunk)

    def _chunk(self, chunk: Mapping[str, Any]) -> None:
        if not self._head:
            self._head = {k: chunk.get(k) for k in ("id", "created", "model")}
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                self._spoiled = True
                return
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str):
                self._text.append(text)
            for key in ("reasoning_content", "reasoning"):
                value = delta.get(key)
                if isinstance(value, str):
                    self._reasoning.append(value)
            for call in delta.get("tool_calls") or ():
                self._tool(call)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]

    def _tool(self, call: Mapping[str, Any]) -> None:
        index = call.get("index", 0)
        found = self._calls.setdefault(index if isinstance(index, int) else 0, _Call())
        if call.get("id"):
            found.id = call["id"]
        function = call.get("function") or {}
        if function.get("name"):
            found.name = function["name"]
        if isinstance(function.get("arguments"), str):
            found.arguments.append(function["arguments"])

    def completion(self, usage: Usage | None) -> bytes | None:
        """The assembled chat.completion, when the stream ended whole with its usage."""
        if self._spoiled or not self._done or usage is None or usage.estimated:
            return None
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self._text) or None}
        if self._reasoning:
            message["reasoning_content"] = "".join(self._reasoning)
        if self._calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": "".join(call.arguments)},
                }
                for _, call in sorted(self._calls.items())
            ]
        return orjson.dumps(
            {
                "id": self._head.get("id"),
                "object": "chat.completion",
                "created": self._head.get("created"),
                "model": self._head.get("model"),
                "choices": [
                    {"index": 0, "message": message, "finish_reason": self._finish or "stop"}
                ],
                "usage": usage.to_openai(),
            }
        )


def replay_chunks(completion: Mapping[str, Any], *, usage: bool) -> Iterator[dict[str, Any]]:
    """A chat.completion as the core's stream chunks: the role, the reasoning, the text, each
    tool call, the finish reason, then (when `usage`) the usage chunk with no choices."""
    head = {
        "id": completion.get("id"),
        "object": "chat.completion.chunk",
        "created": completion.get("created"),
        "model": completion.get("model"),
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    choices = completion.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    yield chunk({"role": "assistant", "content": ""})
    for key in ("reasoning_content", "reasoning"):
        if isinstance(message.get(key), str) and message[key]:
            yield chunk({key: message[key]})
            break
    if isinstance(message.get("content"), str) and message["content"]:
        yield chunk({"content": message["content"]})
    for n, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function") or {}
        delta = {
            "index": n,
            "id": call.get("id"),
            "type": "function",
            "function": {"name": function.get("name"), "arguments": function.get("arguments")},
        }
        yield chunk({"tool_calls": [delta]})
    yield chunk({}, choice.get("finish_reason") or "stop")
    if usage:
        yield {**head, "choices": [], "usage": completion.get("usage")}
