"""The one proxy path (http/proxy.py) on POST /v1/chat/completions: every answer, stream and
refusal in the SPEC's shape with the proxied-answer headers; and a client that leaves a stream
during a long upstream silence cancels the upstream read at once (the ledger row says
client_closed)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from relaygate.gateway import Gateway
from relaygate.http.app import create_app
from tests.conftest import CLIENT_KEY, build_config, openai_provider
from tests.fakes._server import UvicornServer
from tests.fakes.openai_upstream import FakeOpenAI, Reply

MODEL = "up/gpt-4o-mini"
LIMITED_KEY = "rg-fast-limited-key-000000000000"


@pytest.fixture
def served(tmp_path: Path, fake_openai: FakeOpenAI):
    """A gateway with a live upstream, a dead one, a rate-limited client and a small body limit."""
    data = {
        "providers": {
            "up": openai_provider(fake_openai, ["sk-fast-up-1", "sk-fast-up-2"]),
            "dead": {
                "type": "openai",
                "base_url": "http://127.0.0.1:1/v1",
                "keys": ["sk-fast-dead-1"],
                "models": ["gpt-4o-mini"],
            },
        },
        "clients": [
            {"name": "tests", "key": CLIENT_KEY, "rpm": 1000, "tpm": 10_000_000},
            {"name": "limited", "key": LIMITED_KEY, "rpm": 1},
        ],
        "server": {"max_body_bytes": 4096},
        "retries": {"max_attempts": 1, "backoff_base_s": 0.01},
    }
    gw = Gateway(build_config(data, tmp_path / "proxy.db", with_client=False))
    server = UvicornServer(create_app(gateway=gw, announce=lambda text: None)).start()
    yield server
    server.stop()


def _post(base: str, content: Any, key: str | None = CLIENT_KEY, **headers: str):
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.post(base + "/v1/chat/completions", content=content, headers=headers, timeout=10)


def _chat(**fields: Any) -> bytes:
    return orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **fields})


PROXIED = ("x-request-id", "x-relaygate-provider", "x-relaygate-model", "x-relaygate-key-id")
CASES = {  # content (and headers) -> the status
    "answer": (lambda: {"content": _chat()}, 200),
    "stream": (lambda: {"content": _chat(stream=True)}, 200),
    "stream-usage": (
        lambda: {"content": _chat(stream=True, stream_options={"include_usage": True})},
        200,
    ),
    "no-key": (lambda: {"content": _chat(), "key": None}, 401),
    "bad-key": (lambda: {"content": _chat(), "key": "rg-not-a-key-000000000000000"}, 401),
    "not-json": (lambda: {"content": b"{nope"}, 400),
    "not-object": (lambda: {"content": b"[1, 2]"}, 400),
    "bad-stream": (lambda: {"content": _chat(stream="yes")}, 400),
    "no-messages": (lambda: {"content": orjson.dumps({"model": MODEL})}, 400),
    "unknown-model": (lambda: {"content": _chat(model="nowhere/none")}, 404),
    "too-large": (lambda: {"content": _chat(pad="x" * 5000)}, 413),
    "too-large-chunked": (lambda: {"content": iter([_chat(pad="x" * 5000)[:3000]] * 3)}, 413),
    "chunked-ok": (lambda: {"content": iter([_chat()[:10], _chat()[10:]])}, 200),
    "upstream-down": (lambda: {"content": _chat(model="dead/gpt-4o-mini")}, 502),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_case_answers_in_the_spec_shape(served, case):
    make, status = CASES[case]
    kwargs = make()
    resp = _post(served.base, kwargs.pop("content"), **kwargs)
    assert resp.status_code == status, resp.text
    assert "Traceback" not in resp.text
    assert resp.headers["x-request-id"].startswith("req_") or status == 401
    if status != 200:
        assert resp.headers["content-type"] == "application/json"
        assert set(orjson.loads(resp.content)["error"]) == {"message", "type", "code", "param"}
        return
    assert all(name in resp.headers for name in PROXIED)
    if resp.headers["content-type"].startswith("text/event-stream"):
        events = [e for e in resp.text.split("\n\n") if e.strip()]
        assert events[-1] == "data: [DONE]"
        chunks = [orjson.loads(e[6:]) for e in events[:-1]]
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert any(c.get("usage") for c in chunks) == ("usage" in case)
    else:
        assert orjson.loads(resp.content)["object"] == "chat.completion"


def test_a_bad_content_length_is_refused(served):
    try:
        resp = _post(served.base, _chat(), **{"Content-Length": "abc"})
    except httpx.HTTPError:
        return  # the server refused it before the app (h11/httptools)
    assert resp.status_code == 400


def test_rate_limited_answer_carries_the_limit_headers(served):
    first = _post(served.base, _chat(), key=LIMITED_KEY)
    second = _post(served.base, _chat(), key=LIMITED_KEY)
    assert (first.status_code, second.status_code) == (200, 429)
    assert second.headers["retry-after"]
    assert first.headers["x-ratelimit-limit-requests"] == "1"
    assert second.headers["x-ratelimit-remaining-requests"] == "0"


def test_leaving_a_stream_in_an_upstream_silence_cancels_the_upstream_read(
    live_gateway, fake_openai
):
    gw = live_gateway({"providers": {"up": openai_provider(fake_openai, ["sk-fast-up-1"])}})
    fake_openai.default = Reply(chunks=3, chunk_delay_s=3.0)
    t0 = time.monotonic()
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST", gw.v1 + "/chat/completions", content=_chat(stream=True), headers=gw.headers()
        ) as answer,
    ):
        request_id = answer.headers["x-request-id"]
        for line in answer.iter_lines():
            if line.startswith("data: "):
                break  # the first event: the upstream is now silent for 3 s
    rows: list[tuple[Any, ...]] = []
    deadline = time.monotonic() + 2.5
    while not rows and time.monotonic() < deadline:
        with sqlite3.connect(gw.db_path) as db:
            rows = db.execute(
                "SELECT error_code, status FROM ledger WHERE id = ?", (request_id,)
            ).fetchall()
        time.sleep(0.05)
    assert rows == [("client_closed", 200)]
    assert time.monotonic() - t0 < 2.9  # before the upstream's second chunk


def test_a_root_base_url_works_too(served, fake_openai):
    """Tools given the gateway's root URL as their base (Continue.dev and others) call
    /chat/completions and /models: the same door and the same answers."""
    client = openai.OpenAI(base_url=served.base, api_key=CLIENT_KEY, max_retries=0, timeout=10)
    try:
        answer = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.choices[0].message.content == "Echo: hi"
        streamed = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        assert MODEL in [m.id for m in client.models.list()]
    finally:
        client.close()
    assert fake_openai.calls()[-1].path == "/v1/chat/completions"
