"""OpenAI answers built from native ones: chat.completion bodies, usage objects, and a stream relay
base that emits the exact chunk sequence of protocols.md §1.4 (role, content/tool calls, finish,
usage when asked, [DONE]) with dense tool-call indexes and one id/created/model throughout."""

from __future__ import annotations

import time
import uuid
from abc import abstractmethod
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from relaygate.providers._sse import SSEBuffer, data_event, parse_event
from relaygate.providers.base import InBandFailure, StreamRelay
from relaygate.types import Failure, Usage


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def load_json(body: bytes) -> dict[str, Any]:
    """A native answer as an object; anything else is an upstream failure."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        failure = Failure("server", 502, "upstream sent a body that is not JSON")
        raise InBandFailure(failure) from None
    if not isinstance(obj, dict):
        raise InBandFailure(Failure("server", 502, "upstream sent an unexpected JSON value"))
    return obj


def as_int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def usage_object(
    prompt: int,
    completion: int,
    *,
    cached: int = 0,
    reasoning: int | None = None,
    total: int | None = None,
) -> tuple[dict[str, Any], Usage]:
    """The OpenAI `usage` object and the gateway's Usage for the same counts."""
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total if total else prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }
    if reasoning is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return out, Usage(prompt, completion, cached)


def tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def choice(
    index: int,
    *,
    content: str | None,
    calls: list[dict[str, Any]],
    reasoning: str | None,
    finish: str,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    if reasoning:
        message["reasoning_content"] = reasoning
    return {"index": index, "message": message, "finish_reason": finish}


def completion(
    *, id_: str, created: int, model: str, choices: list[dict[str, Any]], usage: dict[str, Any]
) -> bytes:
    return orjson.dumps(
        {
            "id": id_,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": choices,
            "usage": usage,
        }
    )


def iso_epoch(text: Any) -> int | None:
    """RFC 3339 (with any number of fraction digits, `Z` or an offset) to Unix seconds."""
    if not isinstance(text, str) or not text:
        return None
    head, dot, rest = text.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


def reset_headers_wait(headers: Mapping[str, str], prefix: str) -> float | None:
    """Seconds until a rate-limit bucket refills, from `<prefix>*-reset` headers holding RFC 3339
    instants: the latest reset among buckets whose `-remaining` is 0, else the earliest reset."""
    now = time.time()
    lowered = {name.lower(): value for name, value in headers.items()}
    empty, waits = [], []
    for name, value in lowered.items():
        if not (name.startswith(prefix) and name.endswith("-reset")):
            continue
        at = iso_epoch(value)
        if at is None or at <= now:
            continue
        waits.append(at - now)
        if lowered.get(name[: -len("reset")] + "remaining", "").strip() == "0":
            empty.append(at - now)
    if empty:
        return max(empty)
    return min(waits) if waits else None


def next_midnight(zone_name: str, now: float | None = None) -> float:
    """The next 00:00 in a time zone (a provider's daily quota reset), as epoch seconds."""
    try:
        zone: Any = ZoneInfo(zone_name)
    except ZoneInfoNotFoundError:  # no tz database on this machine: midnight UTC instead
        zone = UTC
    local = datetime.fromtimestamp(time.time() if now is None else now, zone)
    midnight = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), zone)
    return midnight.timestamp()


class NativeRelay(StreamRelay):
    """Emits OpenAI chunks. The role chunk waits for the first real output, so an in-band error
    that arrives before any content leaves nothing sent and the request can go to another key."""

    def __init__(self, *, model: str, include_usage: bool) -> None:
        super().__init__()
        self.id = new_id()
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        self.tool_count = 0
        self._opened = False
        self._finish_sent = False

    @abstractmethod
    def feed(self, data: bytes) -> bytes: ...

    @abstractmethod
    def end(self) -> bytes: ...

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        obj: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if self.include_usage:
            obj["usage"] = None
        return data_event(orjson.dumps(obj))

    def _open(self) -> bytes:
        if self._opened:
            return b""
        self._opened = True
        return self._chunk({"role": "assistant", "content": "", "refusal": None})

    def _counted(self) -> None:
        """One more piece of output: an estimated usage never counts fewer completion tokens."""
        self.content_events += 1
        if self.usage is not None and self.usage.estimated:
            count = max(self.usage.completion_tokens, self.content_events)
            self.usage.completion_tokens = count

    def text(self, text: str) -> bytes:
        if not text or self._finish_sent:
            return b""
        self._counted()
        return self._open() + self._chunk({"content": text})

    def reasoning(self, text: str) -> bytes:
        if not text or self._finish_sent:
            return b""
        self._counted()
        return self._open() + self._chunk({"reasoning_content": text})

    def start_tool(self, call_id: str, name: str, arguments: str = "") -> tuple[int, bytes]:
        """A new tool call at the next dense index; returns (index, bytes)."""
        index = self.tool_count
        self.tool_count += 1
        self._counted()
        call = {"index": index, **tool_call(call_id, name, arguments)}
        return index, self._open() + self._chunk({"tool_calls": [call]})

    def tool_arguments(self, index: int, fragment: str) -> bytes:
        if not fragment:
            return b""
        self._counted()
        return self._chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})

    def finish(self, reason: str) -> bytes:
        if self._finish_sent:
            return b""
        self._finish_sent = True
        if reason == "stop" and self.tool_count:
            reason = "tool_calls"
        return self._open() + self._chunk({}, reason)

    def comment(self) -> bytes:
        """A keep-alive for the client, once the answer has started."""
        return b": ping\n\n" if self._opened and not self.finished else b""

    def close(self, usage: dict[str, Any], counted: Usage) -> bytes:
        """The end of a complete stream: usage chunk when asked, then [DONE]."""
        out = self.finish("stop")
        if self.include_usage:
            obj = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage,
            }
            out += data_event(orjson.dumps(obj))
        self.usage = counted
        self.finished = True
        return out + data_event(b"[DONE]")


class SSERelay(NativeRelay):
    """A NativeRelay over server-sent events whose data are JSON objects: `on_event` gets each
    one (a bare JSON object without SSE framing counts as one event too)."""

    def __init__(self, *, model: str, include_usage: bool) -> None:
        super().__init__(model=model, include_usage=include_usage)
        self._sse = SSEBuffer()

    def feed(self, data: bytes) -> bytes:
        return b"".join(self._block(block) for block in self._sse.feed(data))

    def end(self) -> bytes:
        out = b"".join(self._block(block) for block in self._sse.flush())
        return out if self.error is not None or self.finished else out + self.on_end()

    def _block(self, block: bytes) -> bytes:
        if self.error is not None or self.finished:
            return b""
        name, data = parse_event(block)
        if data is None and block.lstrip().startswith(b"{"):
            data = block
        try:
            obj = orjson.loads(data) if data else None
        except orjson.JSONDecodeError:
            return b""
        return self.on_event(name, obj) if isinstance(obj, dict) else b""

    @abstractmethod
    def on_event(self, name: bytes | None, obj: dict[str, Any]) -> bytes: ...

    def on_end(self) -> bytes:
        """Output when the body ends before the stream finished (nothing by default: cut off)."""
        return b""
