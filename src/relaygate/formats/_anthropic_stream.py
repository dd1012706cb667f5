"""The Anthropic Messages door's answer side (protocols.md §3.3-3.4, §12.2): a chat completion
turned into a Message, the core's chat completion chunks into Anthropic's event stream, and what
both share: `stop_reason` from `finish_reason`, Anthropic usage from OpenAI usage, the error type
a client's SDK reads (by HTTP status for an error answer, by error type inside a stream).

A Message's content is a `thinking` block (reasoning, with an empty signature), a `text` block,
then one `tool_use` block per tool call; arguments that are not a JSON object become `input: {}`
(the client's own validation then refuses the call and the model can try again).

A stream is `message_start`, then per content block `content_block_start`, its deltas and
`content_block_stop` (blocks numbered 0, 1, 2... in the order they start; reasoning is a
`thinking` block, text a `text` block, each tool call a `tool_use` block whose arguments arrive as
`input_json_delta` fragments), then `message_delta` with the stop reason and the final usage, then
`message_stop`. Every event carries its `event:` line: the SDK drops events without one."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from relaygate.formats.base import DoorStream, nonempty, reasoning_of

_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
# An error object's `type` (the gateway's or an upstream's) -> Anthropic's `error.type`: its own
# names pass, these two are renamed, anything else is an api_error.
_ERROR_ALIASES = {
    "insufficient_quota": "rate_limit_error",
    "service_unavailable": "overloaded_error",
}
_ERROR_TYPES = frozenset(_STATUS_TYPES.values())


def stop_reason(finish: Any, *, has_tools: bool) -> str:
    """Anthropic's `stop_reason` for a chat `finish_reason`. An answer that calls tools stops for
    them unless it was cut short: some upstreams say `stop` there, and Anthropic clients run the
    tools only on `tool_use`."""
    reason = STOP_REASONS.get(finish, "end_turn") if isinstance(finish, str) else "end_turn"
    return "tool_use" if has_tools and reason == "end_turn" else reason


def counts(usage: Any) -> tuple[int, int, int | None]:
    """(prompt tokens without the cached ones, output tokens, cached tokens or None when the
    usage did not say) from an OpenAI usage object; missing or odd numbers count as 0."""
    if type(usage) is not dict and not isinstance(usage, Mapping):
        return 0, 0, None
    details = usage.get("prompt_tokens_details")
    cached = None
    if details is not None and (type(details) is dict or isinstance(details, Mapping)):
        cached = details.get("cached_tokens")
    cached_n = _int(cached) if cached is not None else None
    prompt = _int(usage.get("prompt_tokens"))
    return max(0, prompt - (cached_n or 0)), _int(usage.get("completion_tokens")), cached_n


def message_usage(usage: Any) -> dict[str, int]:
    """A whole answer's usage: input tokens exclude the cached ones, as Anthropic counts."""
    prompt, output, cached = counts(usage)
    return {
        "input_tokens": prompt,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached or 0,
        "output_tokens": output,
    }


def error_type(kind: Any) -> str:
    """Anthropic's error type for an error object's `type`; whatever else failed is api_error."""
    if not isinstance(kind, str):
        return "api_error"
    return kind if kind in _ERROR_TYPES else _ERROR_ALIASES.get(kind, "api_error")


def status_error_type(status: int) -> str:
    """Anthropic's `error.type` for an HTTP status."""
    if status in _STATUS_TYPES:
        return _STATUS_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def render_message(
    completion: Mapping[str, Any], *, message_id: str, model: Any, tool_id: Callable[[int], str]
) -> bytes:
    """A whole answer: the core's chat.completion -> an Anthropic Message."""
    choices = completion.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    choice: Mapping[str, Any] = first if isinstance(first, Mapping) else {}
    raw = choice.get("message")
    message: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    content: list[dict[str, Any]] = []
    thinking = reasoning_of(message)
    if thinking:
        content.append({"type": "thinking", "thinking": thinking, "signature": ""})
    text = _answer_text(message.get("content"))
    if text:
        content.append({"type": "text", "text": text})
    calls = message.get("tool_calls")
    calls = [c for c in calls if isinstance(c, Mapping)] if isinstance(calls, list) else []
    for n, call in enumerate(calls):
        function = call.get("function")
        function = function if isinstance(function, Mapping) else {}
        call_id, name = call.get("id"), function.get("name")
        content.append(
            {
                "type": "tool_use",
                "id": call_id if isinstance(call_id, str) and call_id else tool_id(n),
                "name": name if isinstance(name, str) else "",
                "input": _tool_input(function.get("arguments")),
            }
        )
    answer = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": completion.get("model") or model,
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason"), has_tools=bool(calls)),
        "stop_sequence": None,
        "usage": message_usage(completion.get("usage")),
    }
    return orjson.dumps(answer)


def _answer_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts, as a few upstreams answer
        return "".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def _tool_input(arguments: Any) -> dict[str, Any]:
    """A tool call's arguments as the object Anthropic clients expect; anything that is not a
    JSON object (blank, cut short, a bare value) is `{}`."""
    if isinstance(arguments, Mapping):
        return dict(arguments)
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def stream_error_event(error: Mapping[str, Any]) -> bytes:
    """A failure after the stream started, as Anthropic sends it: `event: error`."""
    body = {"type": error_type(error.get("type")), "message": str(error.get("message") or "")}
    return event("error", {"type": "error", "error": body})


def event(name: str, data: Mapping[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


_TEXT_DELTA = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":',
    b',"delta":{"type":"text_delta","text":',
)
# the events of every stream, written as `event` writes them with their few values put in
_MESSAGE_START = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":',
    b',"type":"message","role":"assistant","model":',
    b',"content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":0,'
    b'"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":0}}}\n\n',
)
_TEXT_START = (
    b'event: content_block_start\ndata: {"type":"content_block_start","index":%d,'
    b'"content_block":{"type":"text","text":""}}\n\n'
)
_BLOCK_STOP = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":%d}\n\n'
_MESSAGE_DELTA = (
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":',
    b',"stop_sequence":null},"usage":',
)
_MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


class AnthropicStream(DoorStream):
    """One streamed Message. Only the first choice is read (Anthropic has no `n`). A tool call's
    block opens on the first chunk that names its index; fragments for a tool call whose block
    was already closed (an upstream that interleaves calls) go to that block's index, which the
    SDK's accumulator still assembles. The chunks are JSON objects as parsed (dicts)."""

    def __init__(self, *, message_id: str, model: Any, tool_id: Callable[[int], str]) -> None:
        self._id = message_id
        self._model = model
        self._tool_id = tool_id  # n -> an id for a tool call that came without one
        self._started = False
        self._open: tuple[str, int] | None = None  # (kind, tool call index or -1)
        self._blocks = 0
        self._tool_blocks: dict[int, int] = {}  # tool call index -> block index
        self._finish: Any = None
        self._usage: Any = None
        self._text_prefix: bytes | None = None  # the open text block's delta event, up to text

    def feed(self, chunk: Mapping[str, Any]) -> bytes:
        out = b"" if self._started else self._start(chunk.get("model"))
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                out += self._delta(delta)
            if choice.get("finish_reason") is not None:
                self._finish = choice["finish_reason"]
        return out

    def text_run(self, literals: list[bytes], texts: list[str]) -> bytes | None:
        """Texts into the open text block, one delta event each, joined at once (else None:
        `feed` opens one)."""
        prefix = self._text_prefix
        if prefix is None:
            return None
        literals, _ = nonempty(literals, texts)
        if not literals:
            return b""
        return prefix + (b"}}\n\n" + prefix).join(literals) + b"}}\n\n"

    def end(self) -> bytes:
        out = self._start(None) + self._close()
        usage: dict[str, int] = {"output_tokens": 0}
        if self._usage is not None:  # a dict
            prompt, usage["output_tokens"], cached = counts(self._usage)
            usage["input_tokens"] = prompt
            if cached is not None:
                usage["cache_read_input_tokens"] = cached
        reason = stop_reason(self._finish, has_tools=bool(self._tool_blocks))
        return (
            out
            + _MESSAGE_DELTA[0]
            + orjson.dumps(reason)
            + _MESSAGE_DELTA[1]
            + orjson.dumps(usage)
            + b"}\n\n"
            + _MESSAGE_STOP
        )

    def fail(self, error: Mapping[str, Any]) -> bytes:
        return self._start(None) + stream_error_event(error)

    def _start(self, model: Any) -> bytes:
        if self._started:
            return b""
        self._started = True
        model = model if isinstance(model, str) and model else self._model
        return (
            _MESSAGE_START[0]
            + orjson.dumps(self._id)
            + _MESSAGE_START[1]
            + orjson.dumps(model)
            + _MESSAGE_START[2]
        )

    def _delta(self, delta: Mapping[str, Any]) -> bytes:
        out = b""
        thinking = reasoning_of(delta)
        if thinking:
            block = {"type": "thinking", "thinking": "", "signature": ""}
            out += self._open_block(("thinking", -1), block)
            out += self._block_delta({"type": "thinking_delta", "thinking": thinking})
        text = delta.get("content")
        if isinstance(text, str) and text:
            prefix = self._text_prefix
            if prefix is None:
                out += self._open_block(("text", -1), None)
                prefix = self._text_prefix
                assert prefix is not None
            out += prefix + orjson.dumps(text) + b"}}\n\n"
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            if isinstance(call, Mapping):
                out += self._tool_call(call)
        return out

    def _tool_call(self, call: Mapping[str, Any]) -> bytes:
        index = call.get("index", 0)
        index = index if isinstance(index, int) else 0
        function = call.get("function")
        function = function if isinstance(function, Mapping) else {}
        out = b""
        if index not in self._tool_blocks:
            call_id = call.get("id")
            name = function.get("name")
            block = {
                "type": "tool_use",
                "id": call_id if isinstance(call_id, str) and call_id else self._tool_id(index),
                "name": name if isinstance(name, str) else "",
                "input": {},
            }
            out += self._open_block(("tool", index), block)
            self._tool_blocks[index] = self._blocks - 1
        fragment = function.get("arguments")
        if isinstance(fragment, str) and fragment:
            delta = {"type": "input_json_delta", "partial_json": fragment}
            out += self._block_delta(delta, self._tool_blocks[index])
        return out

    def _open_block(self, key: tuple[str, int], block: Mapping[str, Any] | None) -> bytes:
        """Open a block (a text block when `block` is None) unless it is the open one."""
        if self._open == key:
            return b""
        out = self._close()
        self._open = key
        index = self._blocks
        self._blocks += 1
        if block is None:
            self._text_prefix = _TEXT_DELTA[0] + b"%d" % index + _TEXT_DELTA[1]
            return out + _TEXT_START % index
        start = {"type": "content_block_start", "index": index, "content_block": block}
        return out + event("content_block_start", start)

    def _block_delta(self, delta: Mapping[str, Any], index: int | None = None) -> bytes:
        at = self._blocks - 1 if index is None else index
        return event(
            "content_block_delta", {"type": "content_block_delta", "index": at, "delta": delta}
        )

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        self._text_prefix = None
        return _BLOCK_STOP % (self._blocks - 1)
