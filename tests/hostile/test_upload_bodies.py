"""Hostile bodies on the audio and seed routes (SPEC §7a, §8, §8a): multipart forms that are
malformed, unbounded or not forms at all to POST /v1/audio/transcriptions and /upload, bodies
over the 25 MiB audio limit (with Content-Length and chunked), and the seed routes' JSON and form
bodies of the wrong shape (/chat, /chat/json, /v1/generate, /ask).

Each case checks: a 400 (or 413) in the SPEC's error shape, no upstream call, no 500, no canary
secret in the answer or the log, no traceback; the same bodies without a valid key get the fixed
401; the good bodies are served (the control)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.fakes.audio_upstream import sine_wav
from tests.hostile.conftest import AUTH, MODEL, Case, Hostile, run_case
from tests.hostile.test_bodies import BAD_JSON

AUDIO, MIB = "/v1/audio/transcriptions", 1024 * 1024
FORM = ("content-type", "multipart/form-data; boundary=b")
JSON = ("content-type", "application/json")


def part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--b\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + b"--b--\r\n"


WAV = part("file", sine_wav(0.2), "a.wav")
GOOD = form(part("model", MODEL.encode()), WAV)
# (case id, body, content type, status, code, param)
BAD_FORMS: list[tuple[str, Any, tuple[str, str], int, str | None, Any]] = [
    ("no-boundary", GOOD, ("content-type", "multipart/form-data"), 400, "invalid_request", None),
    ("json-not-a-form", b'{"model": "x"}', JSON, 400, "invalid_request", None),
    ("no-content-type", GOOD, ("x-nothing", "1"), 400, "invalid_request", None),
    ("garbage", b"\0\xff" * 4096, FORM, 400, "invalid_request", None),
    ("cut-inside-a-part", GOOD[:-40], FORM, 400, "invalid_request", None),
    ("no-file", form(part("model", MODEL.encode())), FORM, 400, "invalid_request", "file"),
    ("no-model", form(WAV), FORM, 400, "invalid_request", "model"),
    ("empty-model", form(part("model", b""), WAV), FORM, 400, "invalid_request", "model"),
    (
        "model-crlf",
        form(part("model", b"up/gpt\r\n-4o"), WAV),
        FORM,
        400,
        "invalid_request",
        "model",
    ),
    (
        "two-files",
        form(part("model", MODEL.encode()), WAV, WAV),
        FORM,
        400,
        "invalid_request",
        "file",
    ),
    (
        "file-in-another-field",
        form(part("model", MODEL.encode()), part("x", b"1", "x.bin")),
        FORM,
        400,
        "invalid_request",
        "x",
    ),
    (
        "part-without-name",
        form(b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n", WAV),
        FORM,
        400,
        "invalid_request",
        None,
    ),
    (
        "100-fields",
        form(*[part(f"f{i}", b"x") for i in range(100)], WAV),
        FORM,
        400,
        "invalid_request",
        None,
    ),
    (
        "70KB-field",
        form(part("prompt", b"p" * 70_000), WAV),
        FORM,
        400,
        "invalid_request",
        "prompt",
    ),
    (
        "20KB-part-header",
        b"--b\r\nX-Pad: " + b"h" * 20_000 + b"\r\n" + GOOD[4:],
        FORM,
        400,
        "invalid_request",
        None,
    ),
    ("field-not-utf8", form(part("model", b"\xff\xfe"), WAV), FORM, 400, "invalid_request", None),
]
OVER = lambda: form(part("model", MODEL.encode()), part("file", b"\0" * (25 * MIB), "big.wav"))  # noqa: E731

CASES = [
    Case(
        f"{path}-{id_}",
        "POST",
        path,
        body,
        headers=(*AUTH.items(), ctype),
        status=status,
        code=code,
        param=param,
    )
    for path in (AUDIO, "/upload")
    for id_, body, ctype, status, code, param in BAD_FORMS
    if path == AUDIO or param not in ("model",)
]
CASES += [
    Case(
        f"{AUDIO}-over-25MiB{'-chunked' if chunked else ''}",
        "POST",
        AUDIO,
        OVER,
        headers=(*AUTH.items(), FORM),
        status=413,
        code="request_too_large",
        chunked=chunked,
        heavy=True,
    )
    for chunked in (False, True)
]
SEED_JSON = {"/chat": "prompt", "/chat/json": "prompt", "/v1/generate": "prompt", "/ask": "input"}
CASES += [
    Case(
        f"{path}-{id_}",
        "POST",
        path,
        raw,
        headers=(*AUTH.items(), JSON),
        status=400,
        code="invalid_request",
    )
    for path in SEED_JSON
    for id_, raw in BAD_JSON
]
CASES += [
    Case(
        f"{path}-{id_}",
        "POST",
        path,
        orjson.dumps(body),
        headers=(*AUTH.items(), JSON),
        status=400,
        code="invalid_request",
        param=param,
    )
    for path, field in SEED_JSON.items()
    for id_, body, param in [
        ("field-missing", {"text": "hi"}, field),
        ("field-number", {field: 5}, field),
        ("field-list", {field: ["hi"]}, field),
        ("stream-true", {field: "hi", "stream": True}, "stream"),
        ("model-crlf", {field: "hi", "model": "up/gpt\r\n-4o"}, "model"),
        ("max_tokens-string", {field: "hi", "max_tokens": "many"}, "max_tokens"),
    ]
]
CASES += [
    Case(
        "/chat-form-not-utf8",
        "POST",
        "/chat",
        b"prompt=%ff%fe",
        headers=(*AUTH.items(), ("content-type", "application/x-www-form-urlencoded")),
        status=400,
        code="invalid_request",
    )
]
NO_KEY = [
    Case(f"{path}-no-key", "POST", path, GOOD, headers=(FORM,), status=401, code="invalid_api_key")
    for path in (AUDIO, "/audio/transcriptions", "/upload", *SEED_JSON)
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_a_bad_upload_or_seed_body_is_refused(hostile: Hostile, case: Case) -> None:
    run_case(hostile, case)


@pytest.mark.parametrize("case", NO_KEY, ids=lambda c: c.id)
def test_without_a_key_the_fixed_401(hostile: Hostile, case: Case) -> None:
    run_case(hostile, case)


@pytest.mark.parametrize("path", [AUDIO, "/upload"])
def test_a_good_form_is_served(hostile: Hostile, path: str) -> None:
    run_case(
        hostile,
        Case(
            f"{path}-good",
            "POST",
            path,
            GOOD,
            headers=(*AUTH.items(), FORM),
            status=200,
            upstream_ok=True,
        ),
    )


@pytest.mark.parametrize("path", list(SEED_JSON))
def test_a_good_seed_body_is_served(hostile: Hostile, path: str) -> None:
    body = orjson.dumps({SEED_JSON[path]: "hi", "model": MODEL})
    run_case(
        hostile,
        Case(
            f"{path}-good",
            "POST",
            path,
            body,
            headers=(*AUTH.items(), JSON),
            status=200,
            upstream_ok=True,
        ),
    )
