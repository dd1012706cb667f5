"""A fake Whisper upstream on a real socket: `POST /v1/audio/transcriptions` as OpenAI and Groq
answer it (protocols.md §6): a multipart form in, every `response_format` out with its own body
and content type, the recorded 413 above 25 MB, the recorded key errors. Scriptable per upstream
key (tests/fakes/_scripted.py); every request is recorded with its fields in order and the file
it carried (its size and SHA-256; the bytes too when small). The audio's length is read from the
WAV file received, as the real service measures it."""

from __future__ import annotations

import asyncio
import hashlib
import io
import math
import uuid
import wave
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from tests.fakes._scripted import Scripted
from tests.fakes.openai_upstream import errors

LIMIT = 26_214_400  # OpenAI's "Maximum content size limit (26214400)"
KEEP_BYTES = 1024 * 1024


@dataclass
class AudioReply:
    status: int = 200
    error: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    text: str = "The sun rises in the east and sets in the west."
    delay_s: float = 0.0  # before the answer


@dataclass
class Received:
    key: str | None
    fields: list[tuple[str, str]]
    filename: str | None
    file_type: str | None
    size: int
    sha256: str
    data: bytes | None  # the file's bytes when at most KEEP_BYTES


class FakeWhisper(Scripted[AudioReply]):
    """`flavor` "openai" (usage in seconds, or tokens for gpt-4o-*-transcribe) or "groq"
    (x_groq ids, no usage, no srt/vtt)."""

    def __init__(self, flavor: str = "openai") -> None:
        self.flavor = flavor
        self.received: list[Received] = []
        super().__init__(AudioReply())

    @property
    def base_url(self) -> str:
        return self.base + "/v1"

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/audio/transcriptions", self._transcribe)
        return app

    async def _transcribe(self, request: web.Request) -> web.StreamResponse:
        return await serve(self, request, self.flavor)


async def serve(fake: Any, request: web.Request, flavor: str) -> web.StreamResponse:
    """One transcription for `fake` (a Scripted fake whose replies have status, error, headers
    and text: AudioReply, or openai_upstream.Reply, whose text None is the default sentence)."""
    auth = request.headers.get("Authorization", "")
    key = auth[7:] if auth.startswith("Bearer ") else None
    got = await _read(request, key)
    fake._record(request, key, {"fields": got.fields})
    received = getattr(fake, "received", None)
    if received is not None:
        with fake._lock:
            received.append(got)
    if not key:
        return _error(401, errors.invalid_key())
    if got.size > LIMIT:
        return _error(413, _too_large(got.size, flavor))
    reply = fake._next(key)
    await asyncio.sleep(getattr(reply, "delay_s", 0.0))
    if reply.status != 200:
        return _error(reply.status, reply.error or errors.server_error(), reply.headers)
    given = dict(got.fields)
    fmt = given.get("response_format", "json")
    model = given.get("model", "")
    if flavor == "groq" and fmt in ("srt", "vtt"):
        message = f"response_format `{fmt}` is not supported"
        body = {"error": {"message": message, "type": "invalid_request_error"}}
        return _error(400, body)
    seconds = _duration(got.data) if got.data is not None else 1.0
    headers = {"x-request-id": f"req_{uuid.uuid4().hex}", **reply.headers}
    text = reply.text or AudioReply.text
    return _answer(flavor, fmt, model, text, seconds, got.fields, headers)


async def _read(request: web.Request, key: str | None) -> Received:
    fields: list[tuple[str, str]] = []
    filename = file_type = None
    size, digest, kept = 0, hashlib.sha256(), bytearray()
    reader = await request.multipart()
    while True:
        part = await reader.next()
        if part is None:
            break
        assert isinstance(part, aiohttp.BodyPartReader)
        if part.filename is None:
            fields.append((part.name or "", (await part.read()).decode()))
            continue
        filename, file_type = part.filename, part.headers.get("Content-Type")
        while True:
            chunk = await part.read_chunk(256 * 1024)
            if not chunk:
                break
            size += len(chunk)
            digest.update(chunk)
            if len(kept) <= KEEP_BYTES:
                kept += chunk
    data = bytes(kept) if size <= KEEP_BYTES else None
    return Received(key, fields, filename, file_type, size, digest.hexdigest(), data)


def _duration(data: bytes) -> float:
    try:
        with wave.open(io.BytesIO(data)) as w:
            return w.getnframes() / float(w.getframerate())
    except (wave.Error, EOFError):
        return 1.0


def _stamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def _answer(
    flavor: str,
    fmt: str,
    model: str,
    text: str,
    seconds: float,
    fields: list[tuple[str, str]],
    headers: dict[str, str],
) -> web.Response:
    given = dict(fields)
    if fmt == "text":
        return web.Response(text=text + "\n", content_type="text/plain", headers=headers)
    if fmt == "srt":
        body = f"1\n{_stamp(0, ',')} --> {_stamp(seconds, ',')}\n{text}\n\n"
        return web.Response(text=body, content_type="text/plain", headers=headers)
    if fmt == "vtt":
        body = f"WEBVTT\n\n{_stamp(0, '.')} --> {_stamp(seconds, '.')}\n{text}\n\n"
        return web.Response(text=body, content_type="text/vtt", headers=headers)
    if model.startswith("gpt-4o"):
        audio = int(seconds * 10) + 1
        usage: dict[str, Any] = {
            "type": "tokens",
            "input_tokens": audio,
            "output_tokens": len(text.split()),
            "total_tokens": audio + len(text.split()),
            "input_token_details": {"audio_tokens": audio, "text_tokens": 0},
        }
    else:
        usage = {"type": "duration", "seconds": math.ceil(seconds)}
    out: dict[str, Any] = {"text": text}
    if fmt == "verbose_json":
        words = text.split()
        step = seconds / max(1, len(words))
        out = {"task": "transcribe", "language": given.get("language", "english")}
        out.update(duration=round(seconds, 2), text=text)
        out["segments"] = [
            {"id": 0, "seek": 0, "start": 0.0, "end": round(seconds, 2), "text": " " + text,
             "tokens": [50364, 440, 3295], "temperature": 0.0, "avg_logprob": -0.2,
             "compression_ratio": 1.1, "no_speech_prob": 0.01}
        ]  # fmt: skip
        if ("timestamp_granularities[]", "word") in fields:
            out["words"] = [
                {"word": w, "start": round(i * step, 2), "end": round((i + 1) * step, 2)}
                for i, w in enumerate(words)
            ]
    if flavor == "groq":
        out["x_groq"] = {"id": f"req_{uuid.uuid4().hex[:26]}"}
    else:
        out["usage"] = usage
    return web.json_response(out, headers=headers)


def _too_large(size: int, flavor: str) -> dict[str, Any]:
    if flavor == "groq":
        return {
            "error": {
                "message": "Request Entity Too Large",
                "type": "invalid_request_error",
                "code": "request_too_large",
            }
        }
    message = f"Maximum content size limit ({LIMIT}) exceeded ({size} bytes read)"
    return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}


def _error(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(body, status=status, headers=headers or {})


def sine_wav(seconds: float, rate: int = 16000) -> bytes:
    """A mono 16-bit WAV of a 440 Hz tone: a real audio file for the SDK to upload."""
    frames = bytearray()
    for n in range(int(seconds * rate)):
        value = int(12000 * math.sin(2 * math.pi * 440 * n / rate))
        frames += value.to_bytes(2, "little", signed=True)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(frames))
    return out.getvalue()
