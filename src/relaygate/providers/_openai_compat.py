"""The OpenAI wire format, shared by every OpenAI-compatible upstream: the body passes through,
streams are relayed event by event, usage and in-band errors are picked out on the way."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import orjson

from relaygate._logging import Redactor
from relaygate.providers._sse import EventTooLarge, SSEBuffer, data_event, parse_event
from relaygate.providers.base import (
    InBandFailure,
    Provider,
    StreamRelay,
    error_fields,
    retry_after,
    try_again_in,
)
from relaygate.types import Failure, UpstreamRequest, Usage

_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_CONTENT = re.compile(rb'"(?:content|arguments)"\s*:\s*"[^"]')
_SERVER_STATUSES = frozenset({408, 409, 425, 498, 499, 529})


def _inband_failure(obj: Any) -> Failure | None:
    """An error inside a 200: a top-level `error`, a choice with finish_reason `error`, or Groq's
    `x_groq.error`."""
    if not isinstance(obj, dict):
        return None
    err = obj.get("error")
    if err is None:
        for choice in obj.get("choices") or ():
            if isinstance(choice, dict) and (
                choice.get("finish_reason") == "error" or choice.get("error")
            ):
                err = choice.get("error") or {"message": "upstream reported an error"}
                break
    if err is None and isinstance(obj.get("x_groq"), dict):
        err = obj["x_groq"].get("error")
    if err is None:
        return None
    message = err.get("message") if isinstance(err, dict) else str(err)
    return Failure(kind="server", status=502, message=str(message or "upstream error"))


def _maybe_usage(data: bytes) -> bool:
    """Whether _USAGE may match: not when every "usage" key is `"usage":null` (what upstreams
    asked for usage put in every chunk but the last)."""
    n = data.count(b'"usage"')
    return n > 0 and n != data.count(b'"usage":null')


def _has_text(data: bytes) -> bool:
    """Whether a content or arguments string is non-empty (_CONTENT), with a plain substring test
    for the compact form first."""
    for key in (b'"content":"', b'"arguments":"'):
        at = data.find(key)
        if at != -1 and data[at + len(key) : at + len(key) + 1] not in (b'"', b""):
            return True
    return (b'"content"' in data or b'"arguments"' in data) and _CONTENT.search(data) is not None


class OpenAIStreamRelay(StreamRelay):
    """Relays OpenAI SSE as it comes. The upstream is always asked for usage; when the client did
    not ask for it, the usage-only chunk is kept from the client."""

    def __init__(self, *, include_usage: bool) -> None:
        super().__init__()
        self._sse = SSEBuffer()
        self._include_usage = include_usage
        self._started = False

    def feed(self, data: bytes) -> bytes:
        if self._include_usage and not self._sse.pending and self.error is None:
            fast = self._whole_events(data)
            if fast is not None:
                return fast
        try:
            blocks = self._sse.feed(data)
        except EventTooLarge:
            if self.error is None and not self.finished:
                self.error = Failure("server", 502, "the upstream sent an oversized stream event")
            return b""
        return b"".join([self._event(block) for block in blocks])

    def end(self) -> bytes:
        return b"".join(self._event(block) for block in self._sse.flush())

    def _whole_events(self, data: bytes) -> bytes | None:
        """The common case, without a look at each event: a read of whole, plain `data: <json>`
        events in compact JSON (LF only, no comment before the first, no other field, no error)
        that the client takes as they are (it asked for usage). They go out as they came; usage
        is read from the one event that carries it, [DONE] ends the stream, and each event
        counts as one piece of content for an estimate. Any other read (None) takes the
        event-by-event path, which gives the same bytes. A handful of scans of the read."""
        if self.finished or not data.startswith(b"data: "):
            return None
        end = data.rfind(b"\n\n") + 2
        if end == 1:
            return None
        whole = data if end == len(data) else data[:end]
        if b"\r" in whole or b'"error"' in whole:
            return None  # CR line ends or an error: each event
        named = whole.rfind(b'"usage"')
        if named != -1 and whole[named + 7 : named + 9] not in (b":{", b":n"):
            return None  # JSON with spaces (`"usage": {` would go unread): each event
        events = whole.count(b"data: ")
        if whole.count(b"\n") != 2 * events:
            return None  # a field or comment line, an event of several lines, or a payload
            # holding the text `data: `: each event is read on its own instead
        done = whole.find(b"data: [DONE]")
        if done != -1 and done + 14 != len(whole):
            return None  # something after [DONE]
        at = whole.rfind(b'"usage":{')
        if at != -1:  # the last event with a usage object (or x_groq's)
            start = whole.rfind(b"data: ", 0, at) + 6
            try:
                obj = orjson.loads(whole[start : whole.find(b"\n", at)])
            except orjson.JSONDecodeError:
                return None
            if isinstance(obj, dict):
                self._note_usage(obj)
        self.finished = done != -1
        self.content_events += events - self.finished
        self._started = True
        self._sse.keep(data[end:])
        return whole

    def _event(self, block: bytes) -> bytes:
        if self.error is not None or self.finished:
            return b""
        _, data = parse_event(block)
        if data is None:  # a comment or keep-alive: pass it on once the answer has started
            return block + b"\n\n" if self._started and block.startswith(b":") else b""
        if data.startswith(b"[DONE]"):
            self.finished = True
            return data_event(b"[DONE]")
        drop = False
        if b'"error"' in data or (_maybe_usage(data) and _USAGE.search(data)):
            try:
                obj = orjson.loads(data)
            except orjson.JSONDecodeError:
                obj = None
            failure = _inband_failure(obj)
            if failure is not None:
                self.error = failure
                return b""
            if isinstance(obj, dict):
                drop = self._note_usage(obj)
        if _has_text(data):
            self.content_events += 1
        if drop:
            return b""
        self._started = True
        return data_event(data)

    def _note_usage(self, obj: dict[str, Any]) -> bool:
        raw = obj.get("usage")
        if not raw and isinstance(obj.get("x_groq"), dict):
            raw = obj["x_groq"].get("usage")
        usage = Usage.from_openai(raw)
        if usage is not None:
            self.usage = usage
        return usage is not None and not self._include_usage and obj.get("choices") == []


# the embeddings doors every OpenAI-compatible upstream serves at {base}/embeddings
EMBEDDINGS = {"openai_embeddings": "_embed_openai", "gemini_embeddings": "_embed_openai"}


class OpenAICompatProvider(Provider):
    """OpenAI Chat Completions; subclasses adjust with tables, not code."""

    native_doors: Mapping[str, str] = EMBEDDINGS
    chat_path: ClassVar[str] = "/chat/completions"
    drop_params: ClassVar[frozenset[str]] = frozenset()
    strip_message_names: ClassVar[bool] = False

    def models_request(self, key: str | None) -> UpstreamRequest | None:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        headers.update(self.config.headers)
        return UpstreamRequest("GET", self.base_url + "/models", headers)

    def build_request(
        self, body: dict[str, Any], *, model: str, key: str | None, stream: bool
    ) -> UpstreamRequest:
        out = {k: v for k, v in body.items() if k not in self.drop_params}
        out["model"] = model
        if self.strip_message_names:
            out["messages"] = [
                {k: v for k, v in m.items() if k != "name"} if isinstance(m, dict) else m
                for m in body.get("messages", ())
            ]
        if stream:
            given = out.get("stream_options")
            options = dict(given) if isinstance(given, dict) else {}
            options["include_usage"] = True
            out["stream_options"] = options
        headers = {"content-type": "application/json"}
        if key:
            headers["authorization"] = f"Bearer {key}"
        headers.update(self.config.headers)
        return UpstreamRequest("POST", self.base_url + self.chat_path, headers, orjson.dumps(out))

    def parse_response(self, body: bytes, *, model: str) -> tuple[bytes, Usage | None]:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise InBandFailure(
                Failure("server", 502, "upstream sent a body that is not JSON")
            ) from None
        failure = _inband_failure(obj)
        if failure is not None:
            raise InBandFailure(failure)
        if not isinstance(obj, dict) or "choices" not in obj:
            raise InBandFailure(Failure("server", 502, "upstream answer has no choices"))
        return body, Usage.from_openai(obj.get("usage"))

    def stream_relay(self, *, model: str, include_usage: bool) -> OpenAIStreamRelay:
        return OpenAIStreamRelay(include_usage=include_usage)

    def classify_error(self, status: int, headers: Mapping[str, str], body: bytes) -> Failure:
        message, type_, code, param, _ = error_fields(body)
        # some upstreams echo the key they were sent; the message may reach the client (4xx)
        # or a key's state reason, so this pool's keys never leave it
        message = Redactor(spec.key for spec in self.config.keys)(message)
        failure = Failure("bad_request", status, message, type_, code, param)
        lowered = message.lower()
        if status in (401, 403):
            failure.kind = "key_rejected"
        elif status == 402:
            failure.kind = "quota_exhausted"
        elif status == 429:
            wait = try_again_in(message)
            if "insufficient_quota" in (code, type_):
                failure.kind = "quota_exhausted"
            elif "per day" in lowered:
                failure.kind = "quota_exhausted"
                failure.reset_at = time.time() + wait if wait is not None else None
            else:
                failure.kind = "rate_limited"
                failure.retry_after_s = self._rate_limit_wait(headers, wait)
        elif status >= 500 or status in _SERVER_STATUSES:
            failure.kind = "server"
        return failure

    @staticmethod
    def _rate_limit_wait(headers: Mapping[str, str], from_message: float | None) -> float | None:
        from relaygate.providers.base import parse_duration

        wait = retry_after(headers)
        if wait is not None:
            return wait
        if from_message is not None:
            return from_message
        resets = [
            parse_duration(headers.get(name, ""))
            for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
        ]
        known = [r for r in resets if r is not None]
        return max(known) if known else None
