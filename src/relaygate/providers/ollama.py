"""Ollama's native chat API (protocols.md §5): OpenAI chat in, /api/chat out, answers and NDJSON
streams back as OpenAI. No key locally; a configured key is sent as a bearer token (ollama.com).

Images must arrive as data: URLs: other image URLs get a 400 (the gateway does not fetch
client-given URLs). A base URL ending in /v1 or /api (the OpenAI-compatible endpoint) is trimmed
to the server root."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from relaygate.providers import _translate as tr
from relaygate.providers import base
from relaygate.providers._native import (
    NativeRelay,
    as_int,
    choice,
    completion,
    iso_epoch,
    load_json,
    new_call_id,
    new_id,
    tool_call,
    usage_object,
)
from relaygate.providers.base import InBandFailure, ProviderMeta, error_fields, retry_after
from relaygate.types import Failure, UpstreamRequest, Usage

if TYPE_CHECKING:
    from relaygate.config.model import ProviderConfig

META = ProviderMeta(kind="ollama", default_base_url="http://localhost:11434", needs_key=False)
NAME = "Ollama"
MAX_LINE_BYTES = 4 * 1024 * 1024
_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}


# --- request ------------------------------------------------------------------------------------
def _image(url: str) -> str:
    found = tr.data_url(url)
    if found is None:
        tr.invalid(
            f"{NAME} needs the image bytes: send images as base64 data: URLs (the gateway does "
            "not fetch image URLs).",
            "messages",
        )
    return found[1]


def _user(message: Mapping[str, Any], role: str) -> dict[str, Any]:
    texts: list[str] = []
    images: list[str] = []
    for part in tr.parts(message.get("content")):
        kind = part.get("type", "text")
        if kind == "text":
            texts.append(str(part.get("text") or ""))
        elif kind == "image_url" and role == "user":
            images.append(_image(tr.image_url(part)))
        elif kind != "refusal":
            tr.unsupported_part(kind, NAME)
    out: dict[str, Any] = {"role": role, "content": "\n".join(t for t in texts if t)}
    if images:
        out["images"] = images
    return out


def _assistant(message: Mapping[str, Any]) -> dict[str, Any]:
    out = _user(message, "assistant")
    calls = [{"function": {"name": n, "arguments": a}} for _, n, a in tr.tool_calls(message)]
    if calls:
        out["tool_calls"] = calls
    return out


def _messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    names = tr.tool_names(messages)
    out = []
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            out.append({"role": "system", "content": tr.text_of(message.get("content"))})
        elif role == "user":
            out.append(_user(message, "user"))
        elif role == "assistant":
            out.append(_assistant(message))
        elif role == "tool":
            content = tr.text_of(message.get("content"))
            name = tr.tool_name_for(message, names)
            out.append({"role": "tool", "content": content, "tool_name": name})
        else:
            tr.invalid(f"Unsupported message role {role!r}.", "messages")
    return out


def build_body(body: Mapping[str, Any], model: str, stream: bool) -> dict[str, Any]:
    tr.single_choice(body, NAME)
    out: dict[str, Any] = {"model": model, "messages": _messages(tr.messages_of(body))}
    functions = tr.functions(body)
    if functions and tr.tool_choice(body) != "none":
        out["tools"] = [{"type": "function", "function": fn} for fn in functions]
    options = {n: body[k] for k, n in _OPTIONS.items() if tr.number(body, k) is not None}
    if tr.max_tokens(body):
        options["num_predict"] = tr.max_tokens(body)
    if tr.stop_list(body):
        options["stop"] = tr.stop_list(body)
    if options:
        out["options"] = options
    fmt = tr.response_format(body)
    if fmt is not None:
        out["format"] = fmt[1] if fmt[1] is not None else "json"
    out["stream"] = stream  # Ollama streams unless told not to
    return out


# --- answers ------------------------------------------------------------------------------------
def _usage(obj: Mapping[str, Any]) -> tuple[dict[str, Any], Usage]:
    return usage_object(as_int(obj.get("prompt_eval_count")), as_int(obj.get("eval_count")))


def _calls(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for call in message.get("tool_calls") or ():
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            continue
        args = fn.get("arguments")
        text = args if isinstance(args, str) else orjson.dumps(args or {}).decode()
        out.append(tool_call(str(call.get("id") or new_call_id()), str(fn.get("name")), text))
    return out


def _finish(obj: Mapping[str, Any], calls: bool) -> str:
    if obj.get("done_reason") == "length":
        return "length"
    return "tool_calls" if calls else "stop"


def _inband(message: Any) -> Failure:
    return Failure("server", 502, str(message or "upstream error"))


class _Relay(NativeRelay):
    """Ollama NDJSON (one object a line, `done: true` last) -> OpenAI chunks."""

    def __init__(self, *, model: str, include_usage: bool) -> None:
        super().__init__(model=model, include_usage=include_usage)
        self._buf = b""
        self._named = False

    def feed(self, data: bytes) -> bytes:
        lines = (self._buf + data).split(b"\n")
        self._buf = lines.pop()
        if len(self._buf) > MAX_LINE_BYTES:
            self.error = Failure("server", 502, "upstream sent an overlong stream line")
            return b""
        return b"".join(self._line(line) for line in lines)

    def end(self) -> bytes:
        rest, self._buf = self._buf, b""
        return self._line(rest)

    def _line(self, line: bytes) -> bytes:
        line = line.strip()
        if not line or self.error is not None or self.finished:
            return b""
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            self.error = Failure("server", 502, "upstream sent a stream line that is not JSON")
            return b""
        if not isinstance(obj, dict):
            return b""
        if "error" in obj:
            self.error = _inband(obj["error"])
            return b""
        if not self._named:
            self._named = True
            self.model = str(obj.get("model") or self.model)
            self.created = iso_epoch(obj.get("created_at")) or self.created
        out = b""
        message = obj.get("message") if isinstance(obj.get("message"), dict) else {}
        assert isinstance(message, dict)
        out += self.reasoning(str(message.get("thinking") or ""))
        out += self.text(str(message.get("content") or ""))
        for call in _calls(message):
            fn = call["function"]
            out += self.start_tool(call["id"], fn["name"], fn["arguments"])[1]
        if obj.get("done"):
            out += self.finish(_finish(obj, self.tool_count > 0))
            out += self.close(*_usage(obj))
        return out


class Provider(base.Provider):
    meta = META
    native_doors = {"openai_embeddings": "_embed_ollama", "gemini_embeddings": "_embed_ollama"}

    def __init__(self, name: str, config: ProviderConfig) -> None:
        super().__init__(name, config)
        for suffix in ("/v1", "/api"):
            self.base_url = self.base_url.removesuffix(suffix)

    def build_request(
        self, body: dict[str, Any], *, model: str, key: str | None, stream: bool
    ) -> UpstreamRequest:
        headers = {"content-type": "application/json"}
        if key:
            headers["authorization"] = f"Bearer {key}"
        headers.update(self.config.headers)
        payload = orjson.dumps(build_body(body, model, stream))
        return UpstreamRequest("POST", self.base_url + "/api/chat", headers, payload)

    def models_request(self, key: str | None) -> UpstreamRequest | None:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        headers.update(self.config.headers)
        return UpstreamRequest("GET", self.base_url + "/api/tags", headers)

    def parse_models(self, body: bytes) -> list[str]:
        """`{"models": [{"name": "llama3:latest"}]}`; `llama3` names `llama3:latest` too."""
        found = []
        for name in base.listed_ids(body, "models", "name"):
            found.append(name)
            if name.endswith(":latest"):
                found.append(name.removesuffix(":latest"))
        return found

    def parse_response(self, body: bytes, *, model: str) -> tuple[bytes, Usage | None]:
        obj = load_json(body)
        if "error" in obj:
            raise InBandFailure(_inband(obj["error"]))
        message = obj.get("message") if isinstance(obj.get("message"), dict) else {}
        assert isinstance(message, dict)
        calls = _calls(message)
        usage, counted = _usage(obj)
        answer = choice(
            0,
            content=str(message.get("content") or "") or (None if calls else ""),
            calls=calls,
            reasoning=str(message.get("thinking") or "") or None,
            finish=_finish(obj, bool(calls)),
        )
        out = completion(
            id_=new_id(),
            created=iso_epoch(obj.get("created_at")) or int(time.time()),
            model=str(obj.get("model") or model),
            choices=[answer],
            usage=usage,
        )
        return out, counted

    def stream_relay(self, *, model: str, include_usage: bool) -> _Relay:
        return _Relay(model=model, include_usage=include_usage)

    def classify_error(self, status: int, headers: Mapping[str, str], body: bytes) -> Failure:
        message, _, _, _, _ = error_fields(body)
        failure = Failure("bad_request", status, message, "invalid_request_error")
        if status in (401, 403):
            failure.kind = "key_rejected"
        elif status == 429:
            failure.kind, failure.retry_after_s = "rate_limited", retry_after(headers)
        elif status >= 500:
            failure.kind = "server"
        elif status == 404:
            failure.code = "model_not_found" if "not found" in message else None
        return failure
