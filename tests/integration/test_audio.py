"""SPEC §7a Audio end to end: `POST /v1/audio/transcriptions` through the real server with the
openai SDK's `audio.transcriptions.create` on a real WAV file, to fake OpenAI and Groq Whisper
upstreams (tests/fakes/audio_upstream.py): every response_format answered with the upstream's
body and content type, every form field passed on (the model replaced by the target's), the
file's bytes unchanged, key failover, the ledger row billed per audio second, the 25 MiB limit
(Content-Length and chunked), and the form's bad input."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ADMIN_SECRET, CLIENT_KEY
from tests.fakes.audio_upstream import AudioReply, FakeWhisper, sine_wav
from tests.fakes.openai_upstream import errors

OA_KEYS = ["sk-audio-first-0001", "sk-audio-second-0002"]
GROQ_KEY = "gsk-audio-groq-0001"
MIB = 1024 * 1024
FORMATS = {  # response_format -> the content type the upstream answered with
    "json": "application/json",
    "text": "text/plain",
    "verbose_json": "application/json",
    "srt": "text/plain",
    "vtt": "text/vtt",
}


@pytest.fixture
def whisper() -> Iterator[tuple[FakeWhisper, FakeWhisper]]:
    oa, groq = FakeWhisper("openai").start(), FakeWhisper("groq").start()
    yield oa, groq
    oa.stop()
    groq.stop()


@pytest.fixture
def audio_gw(live_gateway: Any, whisper: tuple[FakeWhisper, FakeWhisper]) -> Any:
    oa, groq = whisper
    return live_gateway(
        {
            "providers": {
                "openai": {"type": "openai", "base_url": oa.base_url, "keys": OA_KEYS},
                "groq": {"type": "groq", "base_url": groq.base_url, "keys": [GROQ_KEY]},
            },
            "admin_secret": ADMIN_SECRET,
            "retries": {"max_attempts": 2, "backoff_base_s": 0.01, "backoff_max_s": 0.05},
        }
    )


@pytest.fixture
def wav(tmp_path: Path) -> Path:
    path = tmp_path / "speech.wav"
    path.write_bytes(sine_wav(3.0))  # 3 s at 16 kHz, 16-bit mono: 96,044 bytes
    return path


def sdk(gw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.v1, api_key=CLIENT_KEY, max_retries=0, timeout=30)


def ledger(gw: Any, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 3
    while True:
        flushed = httpx.get(gw.base + "/admin/failures", headers={"admin-secret": ADMIN_SECRET})
        assert flushed.status_code == 200
        with sqlite3.connect(gw.db_path) as db:
            db.row_factory = sqlite3.Row
            rows = [dict(r) for r in db.execute("SELECT * FROM ledger WHERE id = ?", (request_id,))]
        if rows or time.monotonic() > deadline:
            assert rows, f"no ledger row for {request_id}"
            return rows[0]
        time.sleep(0.05)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_response_format_as_the_upstream_answered(audio_gw, whisper, wav, fmt):
    oa, _ = whisper
    with wav.open("rb") as f:
        got = sdk(audio_gw).audio.transcriptions.create(
            model="whisper-1", file=f, response_format=fmt
        )
    text = "The sun rises in the east and sets in the west."
    if fmt == "json":
        assert got.text == text
    elif fmt == "verbose_json":
        assert got.text == text and got.duration == 3.0 and got.segments[0].end == 3.0
    elif fmt == "text":
        assert got == text + "\n"
    elif fmt == "srt":
        assert got == f"1\n00:00:00,000 --> 00:00:03,000\n{text}\n\n"
    else:
        assert got == f"WEBVTT\n\n00:00:00.000 --> 00:00:03.000\n{text}\n\n"
    # the raw answer: the upstream's body and content type, byte for byte
    raw = httpx.post(
        audio_gw.v1 + "/audio/transcriptions",
        headers=audio_gw.headers(),
        data={"model": "whisper-1", "response_format": fmt},
        files={"file": ("speech.wav", wav.read_bytes(), "audio/wav")},
        timeout=30,
    )
    assert raw.status_code == 200
    assert raw.headers["content-type"].startswith(FORMATS[fmt])
    assert raw.headers["x-relaygate-provider"] == "openai"
    assert raw.headers["x-relaygate-model"] == "whisper-1"
    assert raw.headers["x-request-id"].startswith("req_")
    if fmt in ("json", "verbose_json"):
        assert raw.json()["usage"] == {"type": "duration", "seconds": 3}
    assert len(oa.received) == 2


def test_every_field_is_passed_on_and_the_file_unchanged(audio_gw, whisper, wav):
    oa, _ = whisper
    with wav.open("rb") as f:
        got = sdk(audio_gw).audio.transcriptions.create(
            model="openai/whisper-1",
            file=f,
            language="en",
            prompt="A weather report.",
            temperature=0.2,
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
    assert [w.word for w in got.words or []][:3] == ["The", "sun", "rises"]
    (sent,) = oa.received
    assert sent.key == OA_KEYS[0]
    fields = sent.fields
    assert ("model", "whisper-1") in fields  # the target's name, not the client's
    for pair in [
        ("language", "en"),
        ("prompt", "A weather report."),
        ("temperature", "0.2"),
        ("response_format", "verbose_json"),
        ("timestamp_granularities[]", "word"),
        ("timestamp_granularities[]", "segment"),
    ]:
        assert pair in fields
    assert sent.filename == "speech.wav"
    assert sent.data == wav.read_bytes()
    assert sent.sha256 == hashlib.sha256(wav.read_bytes()).hexdigest()


def test_groq_whisper_and_its_own_refusals(audio_gw, whisper, wav):
    oa, groq = whisper
    client = sdk(audio_gw)
    with wav.open("rb") as f:
        got = client.audio.transcriptions.create(
            model="groq/whisper-large-v3", file=f, response_format="verbose_json"
        )
    assert got.text.startswith("The sun") and got.duration == 3.0
    assert [r.key for r in groq.received] == [GROQ_KEY]
    assert ("model", "whisper-large-v3") in groq.received[0].fields
    assert not oa.received
    with wav.open("rb") as f, pytest.raises(openai.BadRequestError) as refused:
        client.audio.transcriptions.create(
            model="groq/whisper-large-v3", file=f, response_format="srt"
        )
    assert "not supported" in refused.value.message


def test_key_failover_and_the_ledger_row_billed_per_second(live_gateway, whisper, wav):
    oa, _ = whisper
    oa.script(OA_KEYS[0], AudioReply(status=401, error=errors.invalid_key()))
    gw = live_gateway(
        {
            "providers": {"openai": {"type": "openai", "base_url": oa.base_url, "keys": OA_KEYS}},
            "admin_secret": ADMIN_SECRET,
            "pricing": {"openai/whisper-1": {"per_second": 0.5}},
        }
    )
    with wav.open("rb") as f:
        got = sdk(gw).audio.transcriptions.with_raw_response.create(model="whisper-1", file=f)
    assert got.parse().text.startswith("The sun")
    assert [r.key for r in oa.received] == OA_KEYS  # the first key refused, the second answered
    assert got.headers["x-relaygate-attempts"] == "2"
    assert got.headers["x-relaygate-key-id"] != ""
    row = ledger(gw, got.headers["x-request-id"])
    assert row["route"] == "audio" and row["status"] == 200
    assert row["provider"] == "openai" and row["model"] == "whisper-1"
    assert row["cost_usd"] == pytest.approx(3 * 0.5)  # usage.seconds = 3, at $0.50 a second
    assert row["attempts"] == 2
    assert CLIENT_KEY not in str(row) and OA_KEYS[1] not in str(row)


def test_a_plain_text_answer_is_billed_by_the_wav_header(live_gateway, whisper, wav):
    oa, _ = whisper
    gw = live_gateway(
        {
            "providers": {"openai": {"type": "openai", "base_url": oa.base_url, "keys": OA_KEYS}},
            "admin_secret": ADMIN_SECRET,
        }
    )
    with wav.open("rb") as f:
        got = sdk(gw).audio.transcriptions.with_raw_response.create(
            model="whisper-1", file=f, response_format="text"
        )
    row = ledger(gw, got.headers["x-request-id"])
    assert row["cost_usd"] == pytest.approx(3.0 * 0.006 / 60)  # whisper-1's published rate


def test_concurrent_uploads_never_spend_past_the_budget(live_gateway, whisper, wav):
    """SPEC §6: the worst case of each upload (the most seconds its file can hold, at the
    per-second price) is reserved before it is sent, so ten at once cannot overspend."""
    oa, _ = whisper
    oa.default = AudioReply(delay_s=0.5)  # all ten in flight together
    gw = live_gateway(
        {
            "providers": {"openai": {"type": "openai", "base_url": oa.base_url, "keys": OA_KEYS}},
            "admin_secret": ADMIN_SECRET,
            "pricing": {"openai/whisper-1": {"per_second": 0.001}},
            "clients": [{"name": "capped", "key": CLIENT_KEY, "monthly_budget_usd": 0.02}],
        }
    )
    data = wav.read_bytes()  # 3 s, at most 3.0014 s by its size: $0.0030 reserved, $0.003 billed

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:

            async def one() -> httpx.Response:
                return await client.post(
                    gw.v1 + "/audio/transcriptions",
                    headers={"Authorization": f"Bearer {CLIENT_KEY}"},
                    data={"model": "whisper-1"},
                    files={"file": ("speech.wav", data, "audio/wav")},
                )

            return await asyncio.gather(*(one() for _ in range(10)))

    answers = asyncio.run(burst())
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * 6 + [429] * 4  # 6 x $0.0030 fit in $0.02, a seventh does not
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert len(oa.received) == 6
    spent = sum(ledger(gw, a.headers["x-request-id"])["cost_usd"] for a in answers if a.is_success)
    assert spent == pytest.approx(6 * 0.003) and spent <= 0.02


def raw_request(gw: Any, head: str, body: bytes = b"") -> tuple[int, bytes]:
    """A request written on a socket as it is given; the status and body of the answer."""
    port = int(gw.base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head.encode() + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.find(b"\r\n\r\n") + 4 + _length(data):
            piece = s.recv(65536)
            if not piece:
                break
            data += piece
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def test_413_before_the_body_when_content_length_says_so(audio_gw, whisper):
    oa, _ = whisper
    head = (
        "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {CLIENT_KEY}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {25 * MIB + 1}\r\n\r\n"
    )
    status, body = raw_request(audio_gw, head)  # not one byte of the body sent
    assert status == 413
    assert b'"request_too_large"' in body and b'"invalid_request_error"' in body
    assert not oa.received


def chunked_upload(size: int) -> Iterator[bytes]:
    yield b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
    yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n'
    yield b"Content-Type: audio/wav\r\n\r\n"
    block = b"\0" * MIB
    for _ in range(size // MIB):
        yield block
    yield b"\r\n--b--\r\n"


def test_413_as_soon_as_a_chunked_body_passes_the_limit(audio_gw, whisper):
    oa, _ = whisper
    headers = audio_gw.headers(**{"content-type": "multipart/form-data; boundary=b"})
    try:
        got = httpx.post(
            audio_gw.v1 + "/audio/transcriptions",
            headers=headers,
            content=chunked_upload(40 * MIB),
            timeout=30,
        )
    except httpx.TransportError:  # the server answered and closed while the client wrote on
        pytest.fail("the 413 did not reach the client")
    assert got.status_code == 413
    assert got.json()["error"]["code"] == "request_too_large"
    assert not oa.received


def test_just_under_the_limit_goes_through(audio_gw, whisper):
    oa, _ = whisper
    headers = audio_gw.headers(**{"content-type": "multipart/form-data; boundary=b"})
    got = httpx.post(
        audio_gw.v1 + "/audio/transcriptions",
        headers=headers,
        content=chunked_upload(24 * MIB),
        timeout=60,
    )
    assert got.status_code == 200, got.text
    (sent,) = oa.received
    assert sent.size == 24 * MIB
    assert sent.sha256 == hashlib.sha256(b"\0" * (24 * MIB)).hexdigest()


@pytest.mark.parametrize(
    ("data", "files", "content_type", "status", "param"),
    [
        (None, {"model": (None, "whisper-1")}, None, 400, "file"),  # a form without a file
        ({}, {"file": ("a.wav", b"RIFF", "audio/wav")}, None, 400, "model"),  # no model
        ({"model": "nobody/none"}, {"file": ("a.wav", b"RIFF", "audio/wav")}, None, 404, "model"),
        (None, None, "application/json", 400, None),  # not a form
    ],
)
def test_bad_forms_are_refused_before_any_upstream_call(
    audio_gw, whisper, data, files, content_type, status, param
):
    oa, _ = whisper
    kwargs: dict[str, Any] = {"data": data, "files": files}
    if content_type:
        kwargs = {"content": b'{"model": "whisper-1"}', "headers": {"content-type": content_type}}
    headers = {**audio_gw.headers(), **kwargs.pop("headers", {})}
    got = httpx.post(audio_gw.v1 + "/audio/transcriptions", headers=headers, timeout=10, **kwargs)
    assert got.status_code == status, got.text
    error = got.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    if param:
        assert error["param"] == param
    assert not oa.received


def test_no_key_is_a_401_in_openais_shape(audio_gw, wav):
    client = openai.OpenAI(base_url=audio_gw.v1, api_key="rg-wrong-key-000000000", max_retries=0)
    with wav.open("rb") as f, pytest.raises(openai.AuthenticationError) as refused:
        client.audio.transcriptions.create(model="whisper-1", file=f)
    assert refused.value.body["code"] == "invalid_api_key"


def test_the_unprefixed_path_for_a_root_base_url(audio_gw, whisper, wav):
    client = openai.OpenAI(base_url=audio_gw.base, api_key=CLIENT_KEY, max_retries=0)
    with wav.open("rb") as f:
        got = client.audio.transcriptions.create(model="whisper-1", file=f)
    assert got.text.startswith("The sun")
