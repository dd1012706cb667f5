"""The raw-ASGI handler of POST /v1/chat/completions (http/_fast.py) answers exactly as the FastAPI
route in routes/chat.py does: same statuses, headers (names, order, values) and bodies, for
answers, streams and every refusal; and a client that leaves a stream during a long upstream
silence cancels the upstream read at once (the ledger row says client_closed)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from relaygate.gateway import Gateway
from relaygate.http.app import create_app
from tests.conftest import CLIENT_KEY, build_config, openai_provider
from tests.fakes._server import UvicornServer
from tests.fakes.openai_upstream import FakeOpenAI, Reply

MODEL = "up/gpt-4o-mini"
LIMITED_KEY = "rg-fast-limited-key-000000000000"
VOLATILE = {"date", "x-request-id", "x-ratelimit-reset-requests"}


class _ThroughFastAPI:
    """The same app with POST /v1/chat/completions left to FastAPI's route."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await FastAPI.__call__(self.app, scope, receive, send)


@pytest.fixture
def pair(tmp_path: Path, fake_openai: FakeOpenAI):
    """Two gateways with the same config: one as served, one through FastAPI's route."""
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
    servers = []
    for name, wrap in (("fast", lambda app: app), ("route", _ThroughFastAPI)):
        gw = Gateway(build_config(data, tmp_path / f"{name}.db", with_client=False))
        app = create_app(gateway=gw, announce=lambda text: None)
        servers.append(UvicornServer(wrap(app)).start())
    yield servers
    for server in servers:
        server.stop()


def _post(base: str, content: Any, key: str | None = CLIENT_KEY, **headers: str):
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.post(base + "/v1/chat/completions", content=content, headers=headers, timeout=10)


def _chat(**fields: Any) -> bytes:
    return orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **fields})


def _shape(resp: httpx.Response) -> tuple[int, list[tuple[str, str]], Any]:
    headers = [(k, "*" if k in VOLATILE else v) for k, v in resp.headers.multi_items()]
    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        events = [ln for ln in resp.text.split("\n\n") if ln.strip()]
        body: Any = [e if e == "data: [DONE]" else orjson.loads(e[6:])["choices"] for e in events]
    else:
        body = orjson.loads(resp.content)
        if isinstance(body, dict) and "choices" in body:
            body = body["choices"]
    return resp.status_code, headers, body


CASES = {
    "answer": lambda: {"content": _chat()},
    "stream": lambda: {"content": _chat(stream=True)},
    "stream-usage": lambda: {"content": _chat(stream=True, stream_options={"include_usage": True})},
    "no-key": lambda: {"content": _chat(), "key": None},
    "bad-key": lambda: {"content": _chat(), "key": "rg-not-a-key-000000000000000"},
    "not-json": lambda: {"content": b"{nope"},
    "not-object": lambda: {"content": b"[1, 2]"},
    "bad-stream": lambda: {"content": _chat(stream="yes")},
    "no-messages": lambda: {"content": orjson.dumps({"model": MODEL})},
    "unknown-model": lambda: {"content": _chat(model="nowhere/none")},
    "too-large": lambda: {"content": _chat(pad="x" * 5000)},
    "too-large-chunked": lambda: {"content": iter([_chat(pad="x" * 5000)[:3000]] * 3)},
    "chunked-ok": lambda: {"content": iter([_chat()[:10], _chat()[10:]])},
    "bad-length": lambda: {"content": _chat(), "Content-Length": "abc"},
    "upstream-down": lambda: {"content": _chat(model="dead/gpt-4o-mini")},
}


@pytest.mark.parametrize("case", list(CASES))
def test_fast_path_answers_as_the_fastapi_route(pair, case):
    fast, route = pair
    kwargs = CASES[case]()
    content = kwargs.pop("content")
    seen = []
    for server in (fast, route):
        data = content if isinstance(content, bytes) else iter(list(CASES[case]()["content"]))
        try:
            resp = _post(server.base, data, **kwargs)
        except httpx.HTTPError as exc:  # e.g. an invalid Content-Length refused by the server
            seen.append(type(exc).__name__)
            continue
        assert "Traceback" not in resp.text
        seen.append(_shape(resp))
    assert seen[0] == seen[1]


def test_rate_limited_answers_match(pair):
    fast, route = pair
    shapes = []
    for server in (fast, route):
        first = _post(server.base, _chat(), key=LIMITED_KEY)
        second = _post(server.base, _chat(), key=LIMITED_KEY)
        assert (first.status_code, second.status_code) == (200, 429)
        assert second.headers["retry-after"]
        shapes.append((_shape(first), _shape(second)))
    assert shapes[0] == shapes[1]


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
