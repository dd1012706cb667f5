"""The provider contract: build an upstream request, parse its answer, relay its stream, classify
its errors. Providers know nothing of pools, retries or storage."""

from __future__ import annotations

import asyncio
import email.utils
import functools
import importlib
import math
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from relaygate.errors import ConfigError
from relaygate.transport.base import NO_OPTIONS, RequestOptions, Transport
from relaygate.types import Failure, NativeBody, UpstreamRequest, UpstreamResponse, Usage

if TYPE_CHECKING:
    from relaygate.config.model import ProviderConfig

MAX_UPSTREAM_BODY = 64 * 1024 * 1024


@dataclass(frozen=True)
class ProviderMeta:
    """Facts about one provider module, read by config and routing without naming providers."""

    kind: str
    default_base_url: str | None = None
    env_aliases: tuple[str, ...] = ()
    name_aliases: tuple[str, ...] = ()  # other names of the provider (routing, priority, config)
    model_prefixes: tuple[str, ...] = ()
    needs_key: bool = True


class InBandFailure(Exception):
    """An error carried inside a 200 answer (OpenRouter, Groq x_groq.error, a data: {"error"})."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


class StreamRelay(ABC):
    """Turns one upstream byte stream into OpenAI SSE bytes for the client, noting usage on the way.

    `feed` returns the bytes to send now (possibly empty); `end` is called when the upstream body
    ends and returns any tail. An in-band error sets `error` and stops output."""

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.error: Failure | None = None
        self.error_sent = False  # the client got the upstream's own failure event already
        self.finished = False
        self.content_events = 0

    def is_finished(self) -> bool:
        """The stream ended as it should (its last output is out), with no failure."""
        return self.finished and self.error is None

    @abstractmethod
    def feed(self, data: bytes) -> bytes: ...

    @abstractmethod
    def end(self) -> bytes: ...


class NativeCodec(Protocol):
    """A module that passes one door's format through to one provider (SPEC §7a)."""

    def build(
        self, provider: Any, body: NativeBody, model: str, key: str | None
    ) -> UpstreamRequest:
        """The client's body, as it came but for the model, to the upstream's own endpoint."""

    def parse(self, body: bytes) -> Usage | None:
        """A same-format answer's usage (the body goes to the client untouched); raises
        InBandFailure for an error inside a 200."""

    def relay(self) -> StreamRelay: ...


# a codec module that sets this to True has its answer's content type go to the client as the
# upstream sent it (a transcription's text, srt or vtt); the others answer JSON
KEEPS_CONTENT_TYPE = "KEEPS_CONTENT_TYPE"


def codec_answer(
    codec: NativeCodec, raw: bytes, model: str, native: NativeBody
) -> tuple[bytes, Usage | None]:
    """A whole answer through a codec: a codec that translates (an operation the provider
    speaks in a format of its own, e.g. embeddings) has `answer(raw, model, native) -> (bytes
    the client gets, usage)`, given the request it answers (what the client asked for shapes
    the answer: a vector encoding, a single or a batch answer, an estimate of the input); the
    others pass the upstream's bytes on as they came."""
    answer = getattr(codec, "answer", None)
    if answer is None:
        return raw, codec.parse(raw)
    out: tuple[bytes, Usage | None] = answer(raw, model, native)
    return out


def native_codec(provider: Provider, door: str) -> NativeCodec | None:
    """The codec that passes `door`'s format through to `provider`, if it speaks it."""
    module = provider.native_doors.get(door)
    return None if module is None else _codec(module)


@functools.cache
def _codec(module: str) -> NativeCodec:
    """A codec module, imported once (a few modules, named by the providers' tables)."""
    codec: NativeCodec = importlib.import_module(f"relaygate.providers.{module}")
    return codec


class Provider(ABC):
    meta: ClassVar[ProviderMeta]
    # front-door formats this upstream speaks itself (SPEC §7a), each with the module of this
    # package that passes such a body through (a NativeCodec): door name -> module name
    native_doors: Mapping[str, str] = {}

    def __init__(self, name: str, config: ProviderConfig) -> None:
        self.name = name
        self.config = config
        base = config.base_url or self.meta.default_base_url or ""
        self.base_url = base.rstrip("/")
        if not self.base_url and self.meta.default_base_url is not None:
            raise ConfigError(f"providers.{name}.base_url: required for this provider type")

    @property
    def needs_key(self) -> bool:
        return self.meta.needs_key

    def models(self) -> list[str]:
        return list(self.config.models)

    def claims(self, model: str) -> bool:
        """Whether a bare model name belongs here by prefix (SPEC §3)."""
        return model.startswith(self.meta.model_prefixes) if self.meta.model_prefixes else False

    @abstractmethod
    def build_request(
        self, body: dict[str, Any], *, model: str, key: str | None, stream: bool
    ) -> UpstreamRequest: ...

    def upstream_request(
        self, body: dict[str, Any], *, model: str, key: str | None, stream: bool
    ) -> UpstreamRequest:
        """`build_request`, with the body's `extra_body` (provider-specific parameters, as the
        OpenAI SDKs send them) merged into what goes upstream instead of sent as a field."""
        extra = body.get("extra_body")
        if extra is None:
            return self.build_request(body, model=model, key=key, stream=stream)
        plain = {k: v for k, v in body.items() if k != "extra_body"}
        request = self.build_request(plain, model=model, key=key, stream=stream)
        if not isinstance(extra, dict) or not extra:
            return request
        if request.json is not None:
            request.json = merge_extra(request.json, extra)
        elif isinstance(request.body, bytes) and request.body:
            import orjson

            sent = orjson.loads(request.body)
            if isinstance(sent, dict):
                request.body = orjson.dumps(merge_extra(sent, extra))
        return request

    def models_request(self, key: str | None) -> UpstreamRequest | None:
        """The upstream's model list (None: it has none to ask); answered with `parse_models`."""
        return None

    def parse_models(self, body: bytes) -> list[str]:
        """Model ids from an OpenAI-shaped list `{"data": [{"id": ...}]}`; tolerant."""
        return listed_ids(body, "data", "id")

    def check_request(self, key: str | None, model: str) -> UpstreamRequest:
        """A cheap call that shows whether the upstream accepts a key: a one-token chat."""
        body = {"messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
        return self.build_request(body, model=model, key=key, stream=False)

    async def send(
        self,
        transport: Transport,
        request: UpstreamRequest,
        *,
        timeout_s: float | None,
        options: RequestOptions = NO_OPTIONS,
    ) -> UpstreamResponse:
        """Send and wait for the status line and headers (the first byte), within timeout_s;
        None: the caller watches the time (the attempt loop's one deadline per attempt).
        `options`: the key's own proxy. `request.read_timeout_s` is not used here: stream
        silences are watched by the relay."""
        method, url, headers, body = request.method, request.url, request.headers, request.body
        if timeout_s is None:
            return await transport.request(method, url, headers, body, options)
        async with asyncio.timeout(timeout_s):
            return await transport.request(method, url, headers, body, options)

    @abstractmethod
    def parse_response(self, body: bytes, *, model: str) -> tuple[bytes, Usage | None]:
        """Native answer -> OpenAI chat.completion bytes and usage; raises InBandFailure."""

    @abstractmethod
    def stream_relay(self, *, model: str, include_usage: bool) -> StreamRelay: ...

    @abstractmethod
    def classify_error(self, status: int, headers: Mapping[str, str], body: bytes) -> Failure: ...


# --- helpers shared by provider modules -------------------------------------------------------


def bearer_headers(
    provider: Provider, key: str | None, content_type: str = "application/json"
) -> dict[str, str]:
    """The headers of a call to an upstream that takes its key as a bearer token: the body's
    content type, the key when there is one, then the provider's configured headers."""
    headers = {"content-type": content_type}
    if key:
        headers["authorization"] = f"Bearer {key}"
    headers.update(provider.config.headers)
    return headers


def listed_ids(body: bytes, field: str, name: str) -> list[str]:
    """`body[field][*][name]` as strings, skipping anything of another shape."""
    import orjson

    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return []
    items = obj.get(field) if isinstance(obj, dict) else None
    if not isinstance(items, list):
        return []
    return [
        str(item[name])
        for item in items
        if isinstance(item, dict) and isinstance(item.get(name), str) and item[name]
    ]


def merge_extra(body: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """`extra` laid over `body`: objects merge key by key, anything else replaces."""
    out = dict(body)
    for key, value in extra.items():
        current = out.get(key)
        if isinstance(value, Mapping) and isinstance(current, dict):
            out[key] = merge_extra(current, value)
        else:
            out[key] = value
    return out


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_TRY_AGAIN = re.compile(r"try again in ((?:\d+(?:\.\d+)?(?:ms|h|m|s))+)", re.IGNORECASE)


def parse_duration(text: str) -> float | None:
    """Go-style durations as providers send them: `120ms`, `7m12s`, `1.984999999s`, `6m0s`."""
    parts = _DURATION_PART.findall(text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        return None
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    total = sum(float(n) * scale[u] for n, u in parts)
    return total if math.isfinite(total) else None


def try_again_in(message: str) -> float | None:
    match = _TRY_AGAIN.search(message)
    return parse_duration(match.group(1)) if match else None


def seconds(text: str) -> float | None:
    """A count of seconds as an upstream sent it: None unless a finite number >= 0 (no NaN, no
    infinity, no negatives: those fall back to the caller's default)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def retry_after(headers: Mapping[str, str]) -> float | None:
    """`retry-after-ms`, else `retry-after` in seconds or as an HTTP date (one in the past, or
    anything unreadable, is None: the caller's default applies)."""
    value = headers.get("retry-after-ms")
    if value:
        ms = seconds(value)
        if ms is not None:
            return ms / 1000
    value = headers.get("retry-after")
    if not value:
        return None
    wait = seconds(value)
    if wait is not None or "," not in value:
        return wait
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        return None
    wait = parsed.timestamp() - time.time()
    return wait if wait > 0 else None


def error_fields(body: bytes) -> tuple[str, str | None, str | None, str | None, dict[str, Any]]:
    """(message, type, code, param, raw error object) from an OpenAI-shaped error body; tolerant."""
    import orjson

    try:
        obj = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        text = body[:300].decode("utf-8", "replace").strip()
        return text or "upstream error", None, None, None, {}
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, str):
        return err, None, None, None, {}
    if not isinstance(err, dict):
        return "upstream error", None, None, None, {}
    code = err.get("code")
    param = err.get("param")
    return (
        str(err.get("message") or "upstream error"),
        str(err["type"]) if err.get("type") else None,
        str(code) if code is not None else None,
        str(param) if param is not None else None,
        err,
    )
