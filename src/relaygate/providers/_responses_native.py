"""OpenAI Responses passed through (SPEC §7a: the Responses door to an upstream that serves
POST /responses, hosted tools included): the client's body goes up as it came but for the model.
Owns the event reader of a passed-through stream: `response.completed` / `response.incomplete`
end it with usage, `response.failed` and `error` events are in-band failures."""

from __future__ import annotations

from typing import Any

import orjson

from relaygate.providers._native import as_int, load_json
from relaygate.providers._openai_compat import OpenAICompatProvider
from relaygate.providers._passthrough import PassthroughRelay, Reader
from relaygate.providers.base import InBandFailure, bearer_headers
from relaygate.types import Failure, NativeBody, UpstreamRequest, Usage

_TERMINAL = frozenset({"response.completed", "response.incomplete"})
_OUTPUT = frozenset({"response.output_text.delta", "response.function_call_arguments.delta"})


def build(
    provider: OpenAICompatProvider, body: NativeBody, model: str, key: str | None
) -> UpstreamRequest:
    headers = bearer_headers(provider, key)
    payload = orjson.dumps({**body.body, "model": model, "store": False})  # stateless (SPEC §7a)
    return UpstreamRequest("POST", provider.base_url + "/responses", headers, payload)


def usage_of(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    details = raw.get("input_tokens_details")
    cached = as_int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return Usage(as_int(raw.get("input_tokens")), as_int(raw.get("output_tokens")), cached)


def _failure(error: Any) -> Failure:
    message = error.get("message") if isinstance(error, dict) else None
    return Failure("server", 502, str(message or "the upstream response failed"))


def parse(body: bytes) -> Usage | None:
    obj = load_json(body)
    if obj.get("status") == "failed" or (obj.get("error") and "output" not in obj):
        raise InBandFailure(_failure(obj.get("error")))
    return usage_of(obj.get("usage"))


class ResponsesReader(Reader):
    def on_event(self, name: bytes | None, obj: dict[str, Any]) -> None:
        kind = obj.get("type")
        if kind in _OUTPUT:
            self.content += 1
        elif kind in _TERMINAL:
            response = obj.get("response")
            self.usage = usage_of(response.get("usage")) if isinstance(response, dict) else None
            self.finished = True
        elif kind == "response.failed":
            response = obj.get("response")
            self.error = _failure(response.get("error") if isinstance(response, dict) else None)
        elif kind == "error":
            self.error = _failure(obj)


def relay() -> PassthroughRelay:
    return PassthroughRelay(ResponsesReader())
