"""Gemini generateContent passed through (SPEC §7a: the Gemini door to a Gemini upstream, the
key pool included): the client's body goes to the target model's generateContent or
streamGenerateContent as it came. Owns the event reader of a passed-through stream: usage is a
running total in each event, an `error` object is an in-band failure, and since Gemini streams
have no terminal event, one that gave a finishReason is complete when the body ends."""

from __future__ import annotations

from typing import Any

import orjson

from relaygate.providers import gemini as native
from relaygate.providers._gemini_errors import inband_failure
from relaygate.providers._native import load_json
from relaygate.providers._passthrough import PassthroughRelay, Reader
from relaygate.providers.base import InBandFailure
from relaygate.types import NativeBody, UpstreamRequest, Usage


def build(
    provider: native.Provider, body: NativeBody, model: str, key: str | None
) -> UpstreamRequest:
    action = ":streamGenerateContent?alt=sse" if body.stream else ":generateContent"
    return provider.model_request(model, action, key, orjson.dumps(body.body))


def count_request(
    provider: native.Provider, body: NativeBody, model: str, key: str | None
) -> UpstreamRequest:
    """The target model's :countTokens with the client's count body (SPEC §7a: exact counts
    from Gemini targets)."""
    return provider.model_request(model, ":countTokens", key, orjson.dumps(body.body))


def parse_count(body: bytes) -> int | None:
    obj = orjson.loads(body)
    value = obj.get("totalTokens") if isinstance(obj, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse(body: bytes) -> Usage | None:
    obj = load_json(body)
    if "error" in obj:
        raise InBandFailure(inband_failure(obj))
    meta = obj.get("usageMetadata")
    return native.usage_of(meta)[1] if isinstance(meta, dict) else None


class GenerateReader(Reader):
    def __init__(self) -> None:
        super().__init__()
        self._finish = False

    def on_event(self, name: bytes | None, obj: dict[str, Any]) -> None:
        if "error" in obj:
            self.error = inband_failure(obj)
            return
        meta = obj.get("usageMetadata")
        if isinstance(meta, dict):
            self.usage = native.usage_of(meta)[1]
        for candidate in obj.get("candidates") or ():
            if not isinstance(candidate, dict):
                continue
            if candidate.get("content"):
                self.content += 1
            if candidate.get("finishReason"):
                self._finish = True

    def on_end(self) -> None:
        self.finished = self._finish


def relay() -> PassthroughRelay:
    return PassthroughRelay(GenerateReader())
