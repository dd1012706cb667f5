"""Shared fixtures: fake upstreams and a live gateway, each on a real loopback socket."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relaygate.config.model import Config
from relaygate.gateway import Gateway
from relaygate.http.app import create_app
from tests.fakes._server import UvicornServer
from tests.fakes.openai_upstream import FakeOpenAI

CLIENT_KEY = "rg-test-client-key-0123456789abcdefghijklmnopq"
ADMIN_SECRET = "admin-secret-for-tests-0123456789"


@dataclass
class LiveGateway:
    server: UvicornServer
    gateway: Gateway
    key: str
    db_path: Path

    @property
    def base(self) -> str:
        return self.server.base

    @property
    def v1(self) -> str:
        return self.server.base + "/v1"

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", **extra}


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()


def build_config(data: dict[str, Any], db_path: Path, *, with_client: bool = True) -> Config:
    payload = dict(data)
    payload.setdefault("database_url", f"sqlite:///{db_path}")
    # no background model listing unless a test asks for it: fakes that count connections, or
    # never answer, see only the requests the test makes
    routing = payload["routing"] = dict(payload.get("routing") or {})
    routing.setdefault("discover_every_s", 0)
    if with_client:
        payload.setdefault("clients", [{"name": "tests", "key": CLIENT_KEY}])
    return Config.model_validate(payload)


@pytest.fixture
def live_gateway(tmp_path: Path) -> Iterator[Callable[..., LiveGateway]]:
    """Factory: `live_gateway({...config...})` serves a gateway on a free port until teardown."""
    started: list[LiveGateway] = []

    def start(
        data: dict[str, Any] | None = None,
        *,
        db_path: Path | None = None,
        with_client: bool = True,
        announce: Callable[[str], None] | None = None,
    ) -> LiveGateway:
        path = db_path or tmp_path / f"gw{len(started)}.db"
        config = build_config(data or {}, path, with_client=with_client)
        gw = Gateway(config)
        app = create_app(gateway=gw, announce=announce or (lambda text: None))
        live = LiveGateway(UvicornServer(app).start(), gw, CLIENT_KEY, path)
        started.append(live)
        return live

    yield start
    for live in started:
        live.server.stop()


def openai_provider(fake: FakeOpenAI, keys: list[str], **extra: Any) -> dict[str, Any]:
    """A provider entry pointing at a fake OpenAI-compatible upstream."""
    return {
        "type": "openai",
        "base_url": fake.base_url,
        "keys": keys,
        "models": ["gpt-4o-mini"],
        **extra,
    }


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
