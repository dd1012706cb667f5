"""Anthropic Messages passed through (SPEC §7a: the Anthropic door to an Anthropic upstream): the
client's body goes up as it came (only `model` is the target's), with its `anthropic-version` and
its `anthropic-beta` list less the values an API key cannot use (`oauth-*`, which Claude Code
sends when it is signed in; Anthropic refuses the whole request for one such value). One more
thing is taken out: past `thinking` blocks without a signature. The door renders another
provider's reasoning so (it has no Anthropic signature), and Anthropic refuses a conversation
holding one; signed thinking and `redacted_thinking` are Anthropic's own and stay. Owns the
event reader that picks usage, errors and the end out of a passed-through stream."""

from __future__ import annotations

from typing import Any

import orjson

from relaygate.providers import anthropic as native
from relaygate.providers._native import load_json
from relaygate.providers._passthrough import PassthroughRelay, Reader
from relaygate.providers.base import InBandFailure
from relaygate.types import NativeBody, UpstreamRequest, Usage

DOOR = "anthropic_messages"
_KEY_ONLY_BETAS = ("oauth-",)
_USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)


def betas(value: str | None) -> str | None:
    """The client's beta list without the values an API key cannot use."""
    if not value:
        return None
    kept = [b.strip() for b in value.split(",") if b.strip()]
    kept = [b for b in kept if not b.startswith(_KEY_ONLY_BETAS)]
    return ",".join(kept) or None


def build(
    provider: native.Provider, body: NativeBody, model: str, key: str | None
) -> UpstreamRequest:
    headers = {
        "content-type": "application/json",
        "anthropic-version": body.headers.get("anthropic-version") or native.API_VERSION,
    }
    beta = betas(body.headers.get("anthropic-beta"))
    if beta:
        headers["anthropic-beta"] = beta
    if key:
        headers["x-api-key"] = key
    headers.update(provider.config.headers)
    path = "/messages" if provider.base_url.endswith("/v1") else "/v1/messages"
    sent = {**body.body, "model": model}
    messages = sent.get("messages")
    if isinstance(messages, list) and any(_unsigned(m) for m in messages):
        sent["messages"] = _without_unsigned_thinking(messages)
    payload = orjson.dumps(sent)
    return UpstreamRequest("POST", provider.base_url + path, headers, payload)


def _unsigned_block(block: Any) -> bool:
    if not isinstance(block, dict) or block.get("type") != "thinking":
        return False
    signature = block.get("signature")
    return not (isinstance(signature, str) and signature)


def _unsigned(message: Any) -> bool:
    """An assistant turn holding a thinking block whose signature is empty or missing."""
    if not isinstance(message, dict) or message.get("role") != "assistant":
        return False
    content = message.get("content")
    return isinstance(content, list) and any(_unsigned_block(b) for b in content)


def _without_unsigned_thinking(messages: list[Any]) -> list[Any]:
    """The messages with unsigned thinking blocks taken out; an assistant turn left with no
    block at all goes too (Anthropic refuses empty content and joins adjacent user turns)."""
    out: list[Any] = []
    for message in messages:
        if not _unsigned(message):
            out.append(message)
            continue
        kept = [b for b in message["content"] if not _unsigned_block(b)]
        if kept:
            out.append({**message, "content": kept})
    return out


def parse(body: bytes) -> Usage | None:
    obj = load_json(body)
    if obj.get("type") == "error" or "error" in obj:
        raise InBandFailure(native.inband_failure(obj.get("error")))
    raw = obj.get("usage")
    return native.usage_of(raw)[1] if isinstance(raw, dict) else None


class MessagesReader(Reader):
    """message_start and message_delta carry usage (the delta's counts are running totals);
    message_stop ends the stream; an `error` event is an in-band failure."""

    def __init__(self) -> None:
        super().__init__()
        self._raw: dict[str, Any] = {}

    def on_event(self, name: bytes | None, obj: dict[str, Any]) -> None:
        kind = obj.get("type")
        if kind == "content_block_delta":
            self.content += 1
        elif kind == "message_start":
            message = obj.get("message")
            self._note(message.get("usage") if isinstance(message, dict) else None)
        elif kind == "message_delta":
            self._note(obj.get("usage"))
        elif kind == "message_stop":
            self.finished = True
        elif kind == "error":
            self.error = native.inband_failure(obj.get("error"))

    def _note(self, raw: Any) -> None:
        if not isinstance(raw, dict):
            return
        for field in _USAGE_FIELDS:
            if raw.get(field) is not None:
                self._raw[field] = raw[field]
        self.usage = native.usage_of(self._raw)[1]


def relay() -> PassthroughRelay:
    return PassthroughRelay(MessagesReader())


def count_request(
    provider: native.Provider, body: NativeBody, model: str, key: str | None
) -> UpstreamRequest:
    """POST /v1/messages/count_tokens with the client's count body (SPEC §7a: exact counts from
    Anthropic targets)."""
    request = build(provider, body, model, key)
    request.url = request.url.removesuffix("/messages") + "/messages/count_tokens"
    return request


def parse_count(body: bytes) -> int | None:
    obj = orjson.loads(body)
    value = obj.get("input_tokens") if isinstance(obj, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None
