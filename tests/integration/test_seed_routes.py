"""SPEC §7a seed routes end to end: `/chat` (form field `prompt`, also JSON), `/chat/json`,
`/v1/generate`, `/ask`, `/upload` answer `{"response", "model", "usage"}` through the real server,
called as the seeds' users call them: curl (form, JSON, `-F file=@x.wav`) and a `requests`
script, unchanged. `routing.seed_model` / `routing.audio_model` are honoured, else the priority
chain / the first provider that serves transcription; errors are the SPEC's (401, 400 naming
the field, a refused `stream`); each call is a ledger row with route `seed`."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import requests

from tests.conftest import ADMIN_SECRET, CLIENT_KEY
from tests.fakes.audio_upstream import FakeWhisper, sine_wav
from tests.fakes.openai_upstream import FakeOpenAI, Reply

CHAT_KEY, AUDIO_KEY = "sk-seed-chat-0001", "sk-seed-audio-0002"
ECHO = "Echo: what is relaygate?"
PROMPT = "what is relaygate?"
needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@pytest.fixture
def seeds(live_gateway: Any, tmp_path: Path) -> Any:
    chat, audio = FakeOpenAI().start(), FakeWhisper("openai").start()
    started: list[Any] = []

    def start(**routing: Any) -> Any:
        gw = live_gateway(
            {
                "providers": {
                    "chat": {
                        "type": "openai",
                        "base_url": chat.base_url,
                        "keys": [CHAT_KEY],
                        "models": ["gpt-4o-mini", "gpt-4.1"],
                    },
                    "whisper": {
                        "type": "openai",
                        "base_url": audio.base_url,
                        "keys": [AUDIO_KEY],
                        "models": ["whisper-1"],
                    },
                },
                "routing": {"priority": ["chat", "whisper"], **routing},
                "admin_secret": ADMIN_SECRET,
            }
        )
        gw.chat, gw.audio = chat, audio
        started.append(gw)
        return gw

    yield start
    chat.stop()
    audio.stop()


def curl(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "20", *args], capture_output=True, timeout=30, check=True
    )
    out: dict[str, Any] = orjson.loads(done.stdout)
    return out


def auth() -> str:
    return f"Authorization: Bearer {CLIENT_KEY}"


def check(answer: dict[str, Any], text: str = ECHO, model: str = "gpt-4o-mini") -> None:
    assert set(answer) == {"response", "model", "usage"}
    assert answer["response"] == text
    assert answer["model"] == model
    assert answer["usage"]["total_tokens"] == (
        answer["usage"]["prompt_tokens"] + answer["usage"]["completion_tokens"]
    )


@needs_curl
def test_the_seed_routes_with_curl(seeds: Any, tmp_path: Path) -> None:
    gw = seeds()
    base = gw.base
    check(curl("-X", "POST", f"{base}/chat", "-H", auth(), "-F", f"prompt={PROMPT}"))
    check(curl(f"{base}/chat", "-H", auth(), "-d", f"prompt={PROMPT}"))  # urlencoded form
    json_body = orjson.dumps({"prompt": PROMPT}).decode()
    ctype = "Content-Type: application/json"
    check(curl(f"{base}/chat", "-H", auth(), "-H", ctype, "-d", json_body))
    check(curl(f"{base}/chat/json", "-H", auth(), "-H", ctype, "-d", json_body))
    generate = orjson.dumps({"prompt": PROMPT, "model": "chat/gpt-4.1"}).decode()
    check(curl(f"{base}/v1/generate", "-H", auth(), "-H", ctype, "-d", generate), model="gpt-4.1")
    ask = orjson.dumps({"input": PROMPT}).decode()
    check(curl(f"{base}/ask", "-H", auth(), "-H", ctype, "-d", ask))
    wav = tmp_path / "x.wav"
    wav.write_bytes(sine_wav(2.0))
    upload = curl(f"{base}/upload", "-H", auth(), "-F", f"file=@{wav}")
    assert upload["response"] == "The sun rises in the east and sets in the west."
    # no audio_model: the first provider (in priority order) that serves transcription
    assert upload["model"] == "whisper-1"
    assert upload["usage"]["audio_seconds"] == 2
    (sent,) = [r for r in gw.chat.calls() if r.path == "/v1/audio/transcriptions"]
    fields = sent.json["fields"]
    assert ("model", "whisper-1") in fields and ("response_format", "json") in fields
    bodies = [r.json for r in gw.chat.calls() if r.path == "/v1/chat/completions"]
    assert [b["model"] for b in bodies] == ["gpt-4o-mini"] * 4 + ["gpt-4.1", "gpt-4o-mini"]
    assert all(b["messages"] == [{"role": "user", "content": PROMPT}] for b in bodies)


def test_a_requests_script_as_a_seed_user_wrote_it(seeds: Any, tmp_path: Path) -> None:
    gw = seeds()
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {CLIENT_KEY}"
    r = session.post(f"{gw.base}/chat", data={"prompt": PROMPT}, timeout=20)
    r.raise_for_status()
    check(r.json())
    r = session.post(f"{gw.base}/chat/json", json={"prompt": PROMPT}, timeout=20)
    check(r.json())
    r = session.post(f"{gw.base}/v1/generate", json={"prompt": PROMPT, "model": None}, timeout=20)
    check(r.json())
    r = session.post(f"{gw.base}/ask", json={"input": PROMPT}, timeout=20)
    print(r.json()["response"])
    check(r.json())
    wav = tmp_path / "note.wav"
    wav.write_bytes(sine_wav(1.0))
    with wav.open("rb") as f:
        r = session.post(f"{gw.base}/upload", files={"file": f}, timeout=20)
    assert r.status_code == 200 and r.json()["response"].startswith("The sun")
    # and an httpx client, JSON and form alike, with the key as x-api-key
    with httpx.Client(base_url=gw.base, headers={"x-api-key": CLIENT_KEY}, timeout=20) as c:
        check(c.post("/chat", json={"prompt": PROMPT, "max_tokens": 32}).json())
        check(c.post("/chat", data={"prompt": PROMPT, "temperature": "0.5"}).json())
    sent = gw.chat.calls()[-2:]
    assert sent[0].json["max_tokens"] == 32 and sent[1].json["temperature"] == 0.5


def test_seed_model_and_audio_model_are_honoured(seeds: Any, tmp_path: Path) -> None:
    gw = seeds(seed_model="chat/gpt-4.1", audio_model="whisper/whisper-1")
    got = httpx.post(gw.base + "/chat/json", headers=gw.headers(), json={"prompt": PROMPT})
    check(got.json(), model="gpt-4.1")
    got = httpx.post(
        gw.base + "/v1/generate",
        headers=gw.headers(),
        json={"prompt": PROMPT, "model": "gpt-4o-mini"},
    )
    check(got.json(), model="gpt-4o-mini")  # a model the request names wins
    got = httpx.post(gw.base + "/ask", headers=gw.headers(), json={"input": PROMPT})
    check(got.json(), model="gpt-4.1")
    wav = sine_wav(1.0)
    got = httpx.post(gw.base + "/upload", headers=gw.headers(), files={"file": ("a.wav", wav)})
    assert got.json()["model"] == "whisper-1"
    assert [r.key for r in gw.audio.received] == [AUDIO_KEY]


def ledger(gw: Any) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 3
    while True:
        httpx.get(gw.base + "/admin/failures", headers={"admin-secret": ADMIN_SECRET})
        with sqlite3.connect(gw.db_path) as db:
            db.row_factory = sqlite3.Row
            rows = [dict(r) for r in db.execute("SELECT * FROM ledger ORDER BY ts")]
        if len(rows) >= 2 or time.monotonic() > deadline:
            return rows


def test_seed_calls_are_ledger_rows_with_route_seed(seeds: Any) -> None:
    gw = seeds()
    gw.chat.default = Reply(usage=(11, 7))
    got = httpx.post(gw.base + "/chat", headers=gw.headers(), data={"prompt": PROMPT})
    assert got.json()["usage"]["prompt_tokens"] == 11
    upload = httpx.post(
        gw.base + "/upload", headers=gw.headers(), files={"file": ("a.wav", sine_wav(1.0))}
    )
    rows = ledger(gw)
    assert [(r["route"], r["provider"], r["status"]) for r in rows] == [
        ("seed", "chat", 200),
        ("seed", "chat", 200),  # the first provider that serves transcription
    ]
    assert rows[0]["prompt_tokens"] == 11 and rows[0]["completion_tokens"] == 7
    assert rows[0]["id"] == got.headers["x-request-id"]
    assert rows[1]["id"] == upload.headers["x-request-id"]


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "param"),
    [
        ("/chat", {"data": {"question": "hi"}}, 400, "prompt"),
        (
            "/chat",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            400,
            None,
        ),
        ("/chat/json", {"json": {"prompt": ""}}, 400, "prompt"),
        ("/chat/json", {"json": {"prompt": "hi", "stream": True}}, 400, "stream"),
        ("/v1/generate", {"json": {"prompt": "hi", "model": "nowhere/x"}}, 404, "model"),
        ("/ask", {"json": {"prompt": "hi"}}, 400, "input"),
        ("/ask", {"json": ["hi"]}, 400, None),
        ("/upload", {"files": {"audio": ("a.wav", b"RIFF")}}, 400, "audio"),
        ("/upload", {"data": {"prompt": "hi"}}, 400, None),
    ],
)
def test_bad_seed_requests_get_the_spec_errors(seeds: Any, path, kwargs, status, param) -> None:
    gw = seeds()
    headers = {**gw.headers(), **kwargs.pop("headers", {})}
    got = httpx.post(gw.base + path, headers=headers, timeout=10, **kwargs)
    assert got.status_code == status, got.text
    error = got.json()["error"]
    assert set(error) == {"message", "type", "code", "param"} and error["param"] == param
    assert not gw.chat.calls() and not gw.audio.received


@pytest.mark.parametrize("path", ["/chat", "/chat/json", "/v1/generate", "/ask", "/upload"])
def test_no_key_is_the_fixed_401(seeds: Any, path: str) -> None:
    gw = seeds()
    got = httpx.post(gw.base + path, json={"prompt": "hi", "input": "hi"}, timeout=10)
    assert got.status_code == 401
    assert got.json()["error"]["code"] == "invalid_api_key"
    assert not gw.chat.calls()


def test_the_routes_are_in_the_openapi_schema(seeds: Any) -> None:
    paths = httpx.get(seeds().base + "/openapi.json").json()["paths"]
    for path in ("/chat", "/chat/json", "/v1/generate", "/ask", "/upload"):
        assert "post" in paths[path]
    for path in ("/v1/audio/transcriptions", "/audio/transcriptions"):
        form = paths[path]["post"]["requestBody"]["content"]["multipart/form-data"]
        assert form["schema"]["properties"]["file"]["format"] == "binary"
