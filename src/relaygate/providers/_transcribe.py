"""Audio transcriptions to OpenAI-compatible upstreams (protocols.md §6: OpenAI and Groq
Whisper, `POST {base}/audio/transcriptions`). The client's form goes up as it came but for the
model: every text field in its order, then the file, read from its spool as the request is
written (MultipartBody, a types.StreamedBody: never the whole file in memory, sent again from
its start on a retry). The answer goes back as the upstream sent it, whatever its
`response_format`; its audio length (`usage.seconds`, `duration`) or its tokens are read for the
bill."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import orjson

from relaygate.providers.base import Provider, StreamRelay, bearer_headers
from relaygate.types import NativeBody, Upload, UpstreamRequest, Usage

CHUNK = 256 * 1024  # bytes read from the spool per write
KEEPS_CONTENT_TYPE = True  # the answer's content type goes to the client (base.py)


def _quoted(name: str) -> str:
    """A name inside Content-Disposition's quotes, escaped as browsers do."""
    return name.replace("\r", "%0D").replace("\n", "%0A").replace('"', "%22")


class MultipartBody:
    """The form re-encoded with a boundary of ours: the text parts and the file part's head in
    memory (small), the file streamed from the spool."""

    __slots__ = ("_head", "_tail", "content_type", "length", "upload")

    def __init__(self, upload: Upload, model: str) -> None:
        boundary = "relaygate-" + os.urandom(12).hex()
        self.content_type = f"multipart/form-data; boundary={boundary}"
        fields = list(upload.fields)
        if not any(name == "model" for name, _ in fields):
            fields.insert(0, ("model", model))
        parts = []
        for name, value in fields:
            value = model if name == "model" else value
            disposition = f'form-data; name="{_quoted(name)}"'
            parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n{value}\r\n")
        if upload.file_field:
            disposition = (
                f'form-data; name="{_quoted(upload.file_field)}"; '
                f'filename="{_quoted(upload.filename)}"'
            )
            kind = _quoted(upload.content_type) or "application/octet-stream"
            parts.append(
                f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
                f"Content-Type: {kind}\r\n\r\n"
            )
            self._tail = f"\r\n--{boundary}--\r\n".encode()
        else:
            self._tail = f"--{boundary}--\r\n".encode()
        self._head = "".join(parts).encode("utf-8")
        self.upload = upload
        self.length = len(self._head) + (upload.size if upload.file_field else 0) + len(self._tail)

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self._head
        if self.upload.file_field:
            spool = self.upload.spool
            spool.seek(0)
            while True:
                data = spool.read(CHUNK)  # a local spool: memory or the page cache
                if not data:
                    break
                yield data
        yield self._tail


def build(provider: Provider, body: NativeBody, model: str, key: str | None) -> UpstreamRequest:
    upload: Upload = body.body["upload"]
    form = MultipartBody(upload, model)
    headers = bearer_headers(provider, key, form.content_type)
    return UpstreamRequest("POST", provider.base_url + "/audio/transcriptions", headers, form)


def usage_of(obj: Any) -> Usage:
    """The bill's figures from a JSON answer: OpenAI's `usage` (duration in seconds, or tokens),
    else verbose_json's `duration`; nothing for a plain-text answer (text, srt, vtt)."""
    usage = Usage()
    if not isinstance(obj, dict):
        return usage
    given = obj.get("usage")
    if isinstance(given, dict) and given.get("type") == "tokens":
        usage.prompt_tokens = _count(given.get("input_tokens"))
        usage.completion_tokens = _count(given.get("output_tokens"))
    elif isinstance(given, dict) and given.get("type") == "duration":
        usage.audio_seconds = _seconds(given.get("seconds"))
    if usage.audio_seconds is None and not usage.total_tokens:
        usage.audio_seconds = _seconds(obj.get("duration"))
    return usage


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _seconds(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok and 0 <= value < 1e7 else None


def answer(raw: bytes, model: str, native: NativeBody | None = None) -> tuple[bytes, Usage]:
    """The answer as it came, and what it says of its cost."""
    if raw[:1] != b"{":
        return raw, Usage()
    try:
        return raw, usage_of(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return raw, Usage()


def parse(body: bytes) -> Usage | None:
    return answer(body, "")[1]


def relay() -> StreamRelay:
    raise NotImplementedError("transcriptions are answered whole")


def default_model(provider: Provider) -> str | None:
    """The provider's transcription model, for /upload when `routing.audio_model` is unset."""
    model: str | None = getattr(provider, "transcription_model", None)
    return model
