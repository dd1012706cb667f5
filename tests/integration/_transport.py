"""Helpers of the transport's end-to-end tests (SPEC §11a): the raw upstreams and proxies of
tests/fakes served from a loop in a thread of their own (the gateway serves from another), an
OpenAI chat answer for them to give, a provider entry with `failure_threshold: 1` (one failure
the key is blamed for cools it: /admin/keys shows it), and the calls the tests make."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any, TypeVar

import httpx
import orjson
import pytest

from tests.conftest import ADMIN_SECRET, LiveGateway
from tests.fakes._server import ThreadLoop
from tests.fakes.raw_http import RawRequest, answer

MODEL = "gpt-4o-mini"
CHAT = orjson.dumps(
    {
        "id": "chatcmpl-transport",
        "object": "chat.completion",
        "created": 1,
        "model": MODEL,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
)
F = TypeVar("F")


async def chat_ok(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
    writer.write(answer(body=CHAT))
    return True


class Fakes:
    """Starts fakes (anything with async start/stop) in one background loop."""

    def __init__(self) -> None:
        self.tl = ThreadLoop()
        self.started: list[Any] = []

    def start(self, fake: F) -> F:
        self.tl.call(fake.start())  # type: ignore[attr-defined]
        self.started.append(fake)
        return fake

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return self.tl.call(coro, timeout)

    def stop(self) -> None:
        for fake in reversed(self.started):
            with contextlib.suppress(Exception):
                self.tl.call(fake.stop(), 15)
        self.tl.stop()


@pytest.fixture
def fakes() -> Iterator[Fakes]:
    started = Fakes()
    yield started
    started.stop()


@pytest.fixture
def no_env_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def config(base_url: str, keys: list[Any], **extra: Any) -> dict[str, Any]:
    """One provider `up` at `base_url`; `extra` goes into its entry."""
    return {
        "providers": {
            "up": {"type": "openai", "base_url": base_url, "keys": keys, "models": [MODEL], **extra}
        },
        "retries": {"max_attempts": 2, "backoff_base_s": 0.01, "failure_threshold": 1},
        "admin_secret": ADMIN_SECRET,
    }


def post(gw: LiveGateway, timeout: float = 20) -> httpx.Response:
    body = {"model": f"up/{MODEL}", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(trust_env=False, timeout=timeout) as client:  # not through HTTP_PROXY
        return client.post(gw.v1 + "/chat/completions", json=body, headers=gw.headers())


def admin_keys(gw: LiveGateway) -> list[dict[str, Any]]:
    with httpx.Client(trust_env=False, timeout=5) as client:
        answer = client.get(gw.base + "/admin/keys", headers={"admin-secret": ADMIN_SECRET})
    assert answer.status_code == 200
    keys: list[dict[str, Any]] = answer.json()["keys"]
    return keys


def assert_keys_unblamed(gw: LiveGateway) -> None:
    """Every key ready, no failure on its streak (one would have cooled it: threshold 1)."""
    for key in admin_keys(gw):
        assert key["state"] == "ready", key
    for pool in gw.gateway.pools.values():
        assert all(key.fail_streak == 0 for key in pool.keys)


def error_of(resp: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = resp.json()["error"]
    return error


@pytest.fixture(scope="session")
def ca() -> Any:
    import trustme

    return trustme.CA()


@pytest.fixture
def ca_file(ca: Any, tmp_path: Any) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def server_tls(ca: Any) -> Any:
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    return context
