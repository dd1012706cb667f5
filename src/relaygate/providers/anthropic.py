"""Anthropic Messages API (protocols.md §3): OpenAI chat in, Messages out, answers and streams back
as OpenAI, and the Anthropic error bodies (400 credit and spend limits, 529 overload) classified."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from relaygate.providers import _translate as tr
from relaygate.providers import base
from relaygate.providers._native import (
    SSERelay,
    as_int,
    choice,
    completion,
    load_json,
    reset_headers_wait,
    tool_call,
    usage_object,
)
from relaygate.providers.base import InBandFailure, ProviderMeta, error_fields, retry_after
from relaygate.types import Failure, UpstreamRequest, Usage

META = ProviderMeta(
    kind="anthropic", default_base_url="https://api.anthropic.com", model_prefixes=("claude-",)
)
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
NAME = "Anthropic"

_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_STATUS_OF_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}
_REGAIN = re.compile(r"regain access on (\d{4}-\d{2}-\d{2})(?: at (\d{1,2}):(\d{2}))?", re.I)
_JSON_ONLY = "Respond with one valid JSON object only, with no text before or after it."


# --- request ------------------------------------------------------------------------------------
def _text_block(part: Mapping[str, Any]) -> dict[str, Any] | None:
    text = str(part.get("text") or "")
    if not text:
        return None
    block: dict[str, Any] = {"type": "text", "text": text}
    if isinstance(part.get("cache_control"), dict):
        block["cache_control"] = part["cache_control"]
    return block


def _source(url: str) -> dict[str, Any]:
    found = tr.data_url(url)
    if found is not None:
        return {"type": "base64", "media_type": found[0], "data": found[1]}
    if url.startswith(("https://", "http://")):
        return {"type": "url", "url": url}
    tr.invalid("Image URLs must be https:// or data: URLs.", "messages")


def _blocks(content: Any, *, images: bool = True) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for part in tr.parts(content):
        kind = part.get("type", "text")
        block: dict[str, Any] | None
        if kind == "text":
            block = _text_block(part)
        elif kind == "image_url" and images:
            block = {"type": "image", "source": _source(tr.image_url(part))}
        elif kind == "file" and images and isinstance(part.get("file"), dict):
            found = tr.data_url(str(part["file"].get("file_data") or ""))
            if found is None:
                tr.invalid("File parts need file_data as a base64 data: URL.", "messages")
            source = {"type": "base64", "media_type": found[0], "data": found[1]}
            block = {"type": "document", "source": source}
        elif kind == "refusal":
            block = None
        else:
            tr.unsupported_part(kind, NAME)
        if block is not None:
            out.append(block)
    return out


def _assistant(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    blocks = _blocks(message.get("content"), images=False)
    for call_id, name, args in tr.tool_calls(message):
        blocks.append({"type": "tool_use", "id": call_id, "name": name, "input": args})
    return blocks


def _tool_result(message: Mapping[str, Any]) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        tr.invalid("A tool message needs tool_call_id.", "messages")
    content = message.get("content")
    value: Any = content if isinstance(content, str) else _blocks(content)
    return {"type": "tool_result", "tool_use_id": call_id, "content": value or ""}


def _conversation(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Any]]:
    """(system blocks, messages). Consecutive turns of one role are merged, so consecutive tool
    results become one user message of tool_result blocks, placed first."""
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            system += _blocks(message.get("content"), images=False)
            continue
        if role == "user":
            native, blocks = "user", _blocks(message.get("content"))
        elif role == "assistant":
            native, blocks = "assistant", _assistant(message)
        elif role == "tool":
            native, blocks = "user", [_tool_result(message)]
        else:
            tr.invalid(f"Unsupported message role {role!r}.", "messages")
        if not blocks:
            continue
        if out and out[-1]["role"] == native:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": native, "content": blocks})
    for item in out:  # a lone plain text block is sent as a string
        content = item["content"]
        if len(content) == 1 and content[0].keys() == {"type", "text"}:
            item["content"] = content[0]["text"]
    return system, out


def _system(blocks: list[dict[str, Any]], body: Mapping[str, Any]) -> Any:
    fmt = tr.response_format(body)
    if fmt is not None:  # no JSON switch in the Messages API: ask for it in the system prompt
        text = _JSON_ONLY
        if fmt[1] is not None:
            schema = orjson.dumps(fmt[1]).decode()
            text += f" It must conform to this JSON Schema: {schema}"
        blocks = [*blocks, {"type": "text", "text": text}]
    if not blocks:
        return None
    if any("cache_control" in b for b in blocks):
        return blocks
    return "\n\n".join(b["text"] for b in blocks)


def _tools(body: Mapping[str, Any], out: dict[str, Any]) -> None:
    tools = tr.declarations(body, "input_schema")
    for tool in tools:  # required by the Messages API
        tool.setdefault("input_schema", {"type": "object"})
    if tools:
        out["tools"] = tools
    choice_ = tr.tool_choice(body)
    native: dict[str, Any] | None = None
    if choice_ == "auto":
        native = {"type": "auto"}
    elif choice_ == "none":
        native = {"type": "none"}
    elif choice_ == "required":
        native = {"type": "any"}
    elif isinstance(choice_, tuple):
        native = {"type": "tool", "name": choice_[1]}
    if body.get("parallel_tool_calls") is False and tools:
        native = native or {"type": "auto"}
        if native["type"] != "none":
            native["disable_parallel_tool_use"] = True
    if native is not None and (tools or native["type"] == "none"):
        out["tool_choice"] = native


def build_body(body: Mapping[str, Any], model: str, stream: bool) -> dict[str, Any]:
    tr.single_choice(body, NAME)
    system, messages = _conversation(tr.messages_of(body))
    out: dict[str, Any] = {
        "model": model,
        "max_tokens": tr.max_tokens(body) or DEFAULT_MAX_TOKENS,
        "messages": messages,
    }
    system_value = _system(system, body)
    if system_value is not None:
        out["system"] = system_value
    temperature = tr.number(body, "temperature")
    if temperature is not None:  # OpenAI allows 0-2, Anthropic 0-1
        out["temperature"] = min(max(float(temperature), 0.0), 1.0)
    for key in ("top_p", "top_k"):
        if tr.number(body, key) is not None:
            out[key] = body[key]
    # the Messages API refuses whitespace-only stop sequences (OpenAI clients often send "\n\n")
    stops = [s for s in tr.stop_list(body) or () if s.strip()]
    if stops:
        out["stop_sequences"] = stops
    _tools(body, out)
    if isinstance(body.get("user"), str) and body["user"]:
        out["metadata"] = {"user_id": body["user"]}
    if isinstance(body.get("thinking"), dict):
        out["thinking"] = body["thinking"]
    if stream:
        out["stream"] = True
    return out


# --- answers ------------------------------------------------------------------------------------
def usage_of(raw: Mapping[str, Any]) -> tuple[dict[str, Any], Usage]:
    cached = as_int(raw.get("cache_read_input_tokens"))
    prompt = as_int(raw.get("input_tokens")) + cached
    prompt += as_int(raw.get("cache_creation_input_tokens"))
    return usage_object(prompt, as_int(raw.get("output_tokens")), cached=cached)


def inband_failure(err: Any) -> Failure:
    err = err if isinstance(err, dict) else {}
    type_ = str(err.get("type") or "api_error")
    return _classify(_STATUS_OF_TYPE.get(type_, 502), {}, str(err.get("message") or type_), type_)


def _regain_at(message: str) -> float | None:
    match = _REGAIN.search(message)
    if not match:
        return None
    try:
        day = datetime.strptime(match.group(1), "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:  # a date that does not exist: the default reset applies
        return None
    hour, minute = int(match.group(2) or 0), int(match.group(3) or 0)
    return day.timestamp() + hour * 3600 + minute * 60


def _classify(status: int, headers: Mapping[str, str], message: str, type_: str | None) -> Failure:
    failure = Failure("bad_request", status, message, type_ or "invalid_request_error")
    lowered = message.lower()
    if status in (401, 403):
        failure.kind = "key_rejected"
    elif status == 402 or (status == 400 and "credit balance is too low" in lowered):
        failure.kind = "quota_exhausted"
    elif status == 400 and "reached your specified api usage limits" in lowered:
        failure.kind, failure.reset_at = "quota_exhausted", _regain_at(message)
    elif status == 429:
        failure.kind = "rate_limited"
        failure.retry_after_s = retry_after(headers) or reset_headers_wait(
            headers, "anthropic-ratelimit-"
        )
    elif status >= 500:
        failure.kind = "server"
    elif status == 400 and "prompt is too long" in lowered:
        failure.code = "context_length_exceeded"
    elif status == 404 and "model" in lowered:
        failure.code = "model_not_found"
    return failure


class _Relay(SSERelay):
    """Anthropic SSE (event: lines, pings, message_stop) -> OpenAI chunks."""

    def __init__(self, *, model: str, include_usage: bool) -> None:
        super().__init__(model=model, include_usage=include_usage)
        self._tools: dict[int, int] = {}  # Anthropic block index -> dense OpenAI tool index
        self._counts: dict[str, Any] = {}
        self._stop: str | None = None

    def on_event(self, name: bytes | None, obj: dict[str, Any]) -> bytes:
        kind = obj.get("type") or (name or b"").decode()
        if kind == "content_block_delta":
            return self._delta(obj)
        if kind == "content_block_start":
            return self._block_start(obj)
        if kind == "message_start":
            message = obj.get("message") or {}
            self.id = str(message.get("id") or self.id)
            self.model = str(message.get("model") or self.model)
            self._note_usage(message.get("usage"))
        elif kind == "message_delta":
            self._stop = (obj.get("delta") or {}).get("stop_reason") or self._stop
            self._note_usage(obj.get("usage"))
        elif kind == "message_stop":
            out = self.finish(_FINISH.get(str(self._stop), "stop"))
            return out + self.close(*usage_of(self._counts))
        elif kind == "ping":
            return self.comment()
        elif kind == "error":
            self.error = inband_failure(obj.get("error"))
        return b""

    def _note_usage(self, raw: Any) -> None:
        if isinstance(raw, dict):
            self._counts.update({k: v for k, v in raw.items() if v is not None})
            _, usage = usage_of(self._counts)
            usage.estimated = True  # replaced by the final count at message_stop
            self.usage = usage

    def _block_start(self, obj: Mapping[str, Any]) -> bytes:
        block = obj.get("content_block") or {}
        kind = block.get("type")
        if kind == "tool_use":
            k, out = self.start_tool(str(block.get("id") or ""), str(block.get("name") or ""))
            self._tools[as_int(obj.get("index"))] = k
            return out
        if kind == "text":
            return self.text(str(block.get("text") or ""))
        if kind == "thinking":
            return self.reasoning(str(block.get("thinking") or ""))
        return b""

    def _delta(self, obj: Mapping[str, Any]) -> bytes:
        delta = obj.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta":
            return self.text(str(delta.get("text") or ""))
        if kind == "input_json_delta":
            k = self._tools.get(as_int(obj.get("index")))
            fragment = str(delta.get("partial_json") or "")
            return b"" if k is None else self.tool_arguments(k, fragment)
        if kind == "thinking_delta":
            return self.reasoning(str(delta.get("thinking") or ""))
        return b""


class Provider(base.Provider):
    meta = META
    native_doors = {"anthropic_messages": "_anthropic_native"}

    def build_request(
        self, body: dict[str, Any], *, model: str, key: str | None, stream: bool
    ) -> UpstreamRequest:
        headers = {"content-type": "application/json", "anthropic-version": API_VERSION}
        if key:
            headers["x-api-key"] = key
        headers.update(self.config.headers)
        path = "/messages" if self.base_url.endswith("/v1") else "/v1/messages"
        payload = orjson.dumps(build_body(body, model, stream))
        return UpstreamRequest("POST", self.base_url + path, headers, payload)

    def models_request(self, key: str | None) -> UpstreamRequest | None:
        headers = {"anthropic-version": API_VERSION}
        if key:
            headers["x-api-key"] = key
        headers.update(self.config.headers)
        path = "/models" if self.base_url.endswith("/v1") else "/v1/models"
        return UpstreamRequest("GET", f"{self.base_url}{path}?limit=1000", headers)

    def parse_response(self, body: bytes, *, model: str) -> tuple[bytes, Usage | None]:
        obj = load_json(body)
        if obj.get("type") == "error" or "error" in obj:
            raise InBandFailure(inband_failure(obj.get("error")))
        texts, thinking, calls = [], [], []
        for block in obj.get("content") or ():
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                texts.append(str(block.get("text") or ""))
            elif kind == "thinking":
                thinking.append(str(block.get("thinking") or ""))
            elif kind == "tool_use":
                args = orjson.dumps(block.get("input") or {}).decode()
                calls.append(tool_call(str(block.get("id")), str(block.get("name")), args))
        finish = _FINISH.get(str(obj.get("stop_reason")), "stop")
        usage, counted = usage_of(obj.get("usage") or {})
        answer = choice(
            0,
            content="".join(texts) if texts else None,
            calls=calls,
            reasoning="".join(thinking) or None,
            finish=finish,
        )
        out = completion(
            id_=str(obj.get("id") or ""),
            created=int(time.time()),
            model=str(obj.get("model") or model),
            choices=[answer],
            usage=usage,
        )
        return out, counted

    def stream_relay(self, *, model: str, include_usage: bool) -> _Relay:
        return _Relay(model=model, include_usage=include_usage)

    def classify_error(self, status: int, headers: Mapping[str, str], body: bytes) -> Failure:
        message, type_, _, _, _ = error_fields(body)
        return _classify(status, headers, message, type_)
