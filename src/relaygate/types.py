"""Small typed records shared across modules: usage, upstream requests and failure classes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Literal, Protocol

FailureKind = Literal[
    "rate_limited",  # per-minute 429: the key cools down, the next key is tried at once
    "quota_exhausted",  # daily quota or credits spent: the key is parked until its reset
    "key_rejected",  # 401/403/API_KEY_INVALID: the key is invalid until re-enabled
    "server",  # 5xx, 529, connect error, in-band error before any byte: retry with backoff
    "timeout",  # no first byte in time: retry with backoff
    "bad_request",  # the request's own fault: returned to the client, not retried
    "transport",  # the way failed (a proxy, a connect timeout, a bound): retried, key untouched
]


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    estimated: bool = False
    audio_seconds: float | None = None  # an audio operation's length, billed per second

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def from_openai(cls, data: Mapping[str, Any] | None) -> Usage | None:
        if not isinstance(data, Mapping):
            return None
        details = data.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, Mapping) else 0
        return cls(
            prompt_tokens=int(data.get("prompt_tokens") or 0),
            completion_tokens=int(data.get("completion_tokens") or 0),
            cached_tokens=int(cached or 0),
        )

    def to_openai(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


@dataclass(slots=True)
class Failure:
    """One upstream failure, classified by its provider module (the one reader of its errors)."""

    kind: FailureKind
    status: int = 502
    message: str = "upstream error"
    type: str | None = None
    code: str | None = None
    param: str | None = None
    retry_after_s: float | None = None  # rate_limited: how long the key should rest
    reset_at: float | None = None  # quota_exhausted: epoch seconds when the quota returns


class StreamedBody(Protocol):
    """A request body sent upstream as it is read (an upload spooled to disk): its length is
    known before the first byte; `chunks()` starts from the beginning each time it is called (a
    retry sends it again)."""

    @property
    def length(self) -> int: ...

    def chunks(self) -> AsyncIterator[bytes]: ...


@dataclass(slots=True)
class Upload:
    """A multipart upload as the client sent it (an audio transcription): every text field in
    order, and the one file part, spooled while it arrived (memory, then a temporary file)."""

    fields: list[tuple[str, str]]
    file_field: str
    filename: str
    content_type: str
    spool: IO[bytes]
    size: int


@dataclass(slots=True)
class UpstreamRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | StreamedBody | None = None
    json: dict[str, Any] | None = field(default=None, repr=False)
    read_timeout_s: float | None = None  # streams: the longest silence between two reads


class UpstreamResponse(Protocol):
    """What a provider's transport hands back once the status line and headers arrived."""

    status: int

    @property
    def headers(self) -> Mapping[str, str]: ...

    async def read(self, limit: int) -> bytes: ...

    def iter_chunks(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class NativeBody:
    """A client's request in a front door's own format (SPEC §7a), for a provider that speaks
    that format: it goes upstream as it came, with nothing lost. `headers` holds the client's
    headers the format defines (e.g. a version or beta list), lower-case names."""

    door: str
    body: dict[str, Any]
    stream: bool
    headers: Mapping[str, str] = field(default_factory=dict)
    only: bool = False  # no chat translation: a target without a codec for `door` cannot take it


@dataclass(slots=True)
class Target:
    """One place a request can go: a configured provider and the model name it knows."""

    provider: str
    model: str
