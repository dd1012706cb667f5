"""Anthropic Messages passed through (SPEC §7a: the Anthropic door to an Anthropic upstream): the
client's body goes up as it came (only `model` is the target's), with its `anthropic-version` and
its `anthropic-beta` list less the values an API key cannot use (`oauth-*`, which Claude Code
sends when it is signed in; Anthropic refuses the whole request for one such value). Owns the
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
    payload = orjson.dumps({**body.body, "model": model})
    return UpstreamRequest("POST", provider.base_url + path, headers, payload)


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
