"""The Gemini native door's answer side (protocols.md §4.3-4.5, §13.2): a chat completion as a
GenerateContentResponse, the core's chunks as Gemini's SSE stream, and google.rpc.Status errors.

A candidate's parts are a thought part (`"thought": true`) when the answer reasoned, then the
text, then one `functionCall` part per tool call with its arguments parsed. A stream is data-only
events (no `event:` lines, no terminator): one per chunk that carries text or reasoning, then a
last event with the function calls (buffered until whole: Gemini never streams partial
arguments), each candidate's `finishReason` and the final `usageMetadata`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from relaygate.formats.base import DoorStream, nonempty, reasoning_of, text_alone

_FINISH = {
    "stop": "STOP",
    "length": "MAX_TOKENS",
    "content_filter": "SAFETY",
    "tool_calls": "STOP",  # Gemini says STOP when the model called a function
    "function_call": "STOP",
}
# HTTP status -> google.rpc.Code name (Google's mapping; 413 and the other 4xx are requests
# that cannot be served as sent: INVALID_ARGUMENT; 502 is a retryable upstream failure).
_CANONICAL = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
# An error object's `type` (the gateway's or an upstream's) -> the HTTP status it stands for.
_TYPE_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "insufficient_quota": 429,
    "upstream_error": 502,
    "service_unavailable": 503,
    "overloaded_error": 503,
    "timeout_error": 504,
}


def canonical_status(status: int) -> str:
    """The google.rpc.Code name a Google API answers with this HTTP status."""
    if status in _CANONICAL:
        return _CANONICAL[status]
    return "INVALID_ARGUMENT" if 400 <= status < 500 else "INTERNAL"


def finish_reason(value: Any) -> str:
    if value is None:
        return "STOP"
    return _FINISH.get(value, "OTHER") if isinstance(value, str) else "OTHER"


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_metadata(usage: Any) -> dict[str, int] | None:
    """OpenAI usage -> usageMetadata. Gemini counts thinking apart from the visible output
    (`thoughtsTokenCount`), so reasoning tokens move out of `candidatesTokenCount`."""
    if not isinstance(usage, Mapping):
        return None
    prompt, output = _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))
    details = usage.get("completion_tokens_details")
    thoughts = _int(details.get("reasoning_tokens")) if isinstance(details, Mapping) else 0
    details = usage.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, Mapping) else 0
    out = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": max(0, output - thoughts),
        "totalTokenCount": _int(usage.get("total_tokens")) or prompt + output,
    }
    if thoughts:
        out["thoughtsTokenCount"] = thoughts
    if cached:
        out["cachedContentTokenCount"] = cached
    return out


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts, as some upstreams answer
        return "".join(
            str(p.get("text") or "") for p in content if isinstance(p, Mapping) and "text" in p
        )
    return ""


def call_part(call_id: Any, name: Any, arguments: Any) -> dict[str, Any]:
    """A tool call -> a functionCall part, `args` parsed (arguments that are not a JSON object
    arrive whole as `{"arguments": <the raw text>}`)."""
    args: Any = arguments if isinstance(arguments, dict) else None
    if args is None and isinstance(arguments, str):
        try:
            args = orjson.loads(arguments) if arguments.strip() else {}
            orjson.dumps(args)  # nested past what can be written back: keep the text
        except (orjson.JSONDecodeError, orjson.JSONEncodeError):
            args = None
    if not isinstance(args, dict):
        args = {"arguments": arguments if isinstance(arguments, str) else ""}
    call: dict[str, Any] = {"name": name if isinstance(name, str) else "", "args": args}
    if isinstance(call_id, str) and call_id:
        call["id"] = call_id
    return {"functionCall": call}


def candidate(choice: Mapping[str, Any], position: int) -> dict[str, Any]:
    raw = choice.get("message")
    message: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    parts: list[dict[str, Any]] = []
    thought = reasoning_of(message)
    if thought:
        parts.append({"text": thought, "thought": True})
    text = _text(message.get("content")) or _text(message.get("refusal"))
    if text:
        parts.append({"text": text})
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        if isinstance(call, Mapping):
            function = call.get("function")
            fn: Mapping[str, Any] = function if isinstance(function, Mapping) else {}
            parts.append(call_part(call.get("id"), fn.get("name"), fn.get("arguments")))
    index = choice.get("index")
    return {
        "content": {"role": "model", "parts": parts},
        "finishReason": finish_reason(choice.get("finish_reason")),
        "index": index if isinstance(index, int) else position,
    }


def render_response(completion: Mapping[str, Any], *, response_id: str, model: Any) -> bytes:
    """A whole answer: the core's chat.completion -> a GenerateContentResponse."""
    choices = completion.get("choices")
    rows = [c for c in choices if isinstance(c, Mapping)] if isinstance(choices, list) else []
    out: dict[str, Any] = {"candidates": [candidate(c, i) for i, c in enumerate(rows)]}
    usage = usage_metadata(completion.get("usage"))
    if usage is not None:
        out["usageMetadata"] = usage
    out["modelVersion"] = completion.get("model") or model
    out["responseId"] = response_id
    return orjson.dumps(out)


def error_event(error: Mapping[str, Any]) -> bytes:
    """An error after the stream started (the SPEC's error object) -> one google.rpc.Status
    `data:` event; the SDK raises it as an APIError."""
    status = error.get("status")
    if not isinstance(status, int):
        status = _TYPE_STATUS.get(str(error.get("type")), 500)
    message = str(error.get("message") or "")
    body = {"code": status, "message": message, "status": canonical_status(status)}
    return b"data: " + orjson.dumps({"error": body}) + b"\n\n"


_TEXT_HEAD = b'data: {"candidates":[{"content":{"role":"model","parts":[{"text":'


class GeminiStream(DoorStream):
    """The core's chunks -> Gemini's SSE events. The last event is sent when the usage chunk
    (`choices: []`) arrives, or at `end` when none came."""

    def __init__(self, *, response_id: str, model: Any) -> None:
        self._id = response_id
        self._model = model
        self._seen: dict[int, Any] = {}  # choice index -> finish_reason (None until it comes)
        self._calls: dict[int, dict[int, dict[str, Any]]] = {}  # choice -> tool index -> call
        self._usage: Any = None
        self._done = False
        self._tail = b""  # what closes a text event: the model and the response id, encoded

    def feed(self, chunk: Mapping[str, Any]) -> bytes:
        if self._done:
            return b""
        model = chunk.get("model")
        if isinstance(model, str) and model and (model != self._model or not self._tail):
            self._model = model
            self._tail = b""
        if not self._tail:
            tail = {"modelVersion": self._model, "responseId": self._id}
            self._tail = b'}]},"index":0}],' + orjson.dumps(tail)[1:] + b"\n\n"
        choices = chunk.get("choices")
        text = text_alone(chunk)
        if text is not None:  # the common chunk, without the dicts of an event
            self._seen.setdefault(0, None)
            return _TEXT_HEAD + orjson.dumps(text) + self._tail if text else b""
        rows = [c for c in choices if isinstance(c, Mapping)] if isinstance(choices, list) else []
        candidates = []
        for choice in rows:
            found = self._choice(choice)
            if found is not None:
                candidates.append(found)
        out = self._event({"candidates": candidates}) if candidates else b""
        if isinstance(chunk.get("usage"), Mapping):
            self._usage = chunk["usage"]
            if not rows:
                out += self._last()
        return out

    def text_run(self, literals: list[bytes], texts: list[str]) -> bytes | None:
        """Texts for candidate 0, one event each with the chunk's JSON literal copied in, joined
        at once (after a first chunk went through `feed`, which fixed the model)."""
        if self._done or not self._tail:
            return None
        self._seen.setdefault(0, None)
        literals, _ = nonempty(literals, texts)
        if not literals:
            return b""
        return _TEXT_HEAD + (self._tail + _TEXT_HEAD).join(literals) + self._tail

    def end(self) -> bytes:
        return b"" if self._done else self._last()

    def fail(self, error: Mapping[str, Any]) -> bytes:
        self._done = True
        return error_event(error)

    def _choice(self, choice: Mapping[str, Any]) -> dict[str, Any] | None:
        index = choice.get("index")
        index = index if isinstance(index, int) else 0
        finish = choice.get("finish_reason")
        if finish is not None:
            self._seen[index] = finish
        else:
            self._seen.setdefault(index, None)
        raw = choice.get("delta")
        delta: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        calls = delta.get("tool_calls")
        for n, call in enumerate(calls if isinstance(calls, list) else []):
            if isinstance(call, Mapping):
                self._buffer(index, n, call)
        parts: list[dict[str, Any]] = []
        thought = reasoning_of(delta)
        if thought:
            parts.append({"text": thought, "thought": True})
        text = _text(delta.get("content"))
        if text:
            parts.append({"text": text})
        if not parts:
            return None
        return {"content": {"role": "model", "parts": parts}, "index": index}

    def _buffer(self, choice: int, position: int, call: Mapping[str, Any]) -> None:
        tool_index = call.get("index")
        key = tool_index if isinstance(tool_index, int) else position
        new: dict[str, Any] = {"id": None, "name": "", "arguments": []}
        slot = self._calls.setdefault(choice, {}).setdefault(key, new)
        if isinstance(call.get("id"), str) and call["id"]:
            slot["id"] = call["id"]
        raw = call.get("function")
        function: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        if isinstance(function.get("name"), str) and function["name"] and not slot["name"]:
            slot["name"] = function["name"]
        if isinstance(function.get("arguments"), str):
            slot["arguments"].append(function["arguments"])

    def _last(self) -> bytes:
        self._done = True
        candidates = []
        for index in sorted(self._seen) or [0]:
            calls = self._calls.get(index, {})
            parts = [
                call_part(c["id"], c["name"], "".join(c["arguments"]))
                for _, c in sorted(calls.items())
            ]
            candidates.append(
                {
                    "content": {"role": "model", "parts": parts},
                    "finishReason": finish_reason(self._seen.get(index)),
                    "index": index,
                }
            )
        event: dict[str, Any] = {"candidates": candidates}
        usage = usage_metadata(self._usage)
        if usage is not None:
            event["usageMetadata"] = usage
        return self._event(event)

    def _event(self, event: dict[str, Any]) -> bytes:
        event["modelVersion"] = self._model
        event["responseId"] = self._id
        return b"data: " + orjson.dumps(event) + b"\n\n"
