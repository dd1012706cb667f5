"""What the embeddings end-to-end tests share: a gateway in front of one fake upstream of each
kind that serves embeddings (OpenAI-compatible with two keys, Gemini, Ollama; real sockets,
exact wire formats), an Anthropic target that serves none, a fallback group, prices."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_SECRET, LiveGateway
from tests.fakes.gemini_upstream import FakeGemini
from tests.fakes.ollama_upstream import FakeOllama
from tests.fakes.openai_upstream import FakeOpenAI

OA_KEYS = ("sk-embed-first-0001", "sk-embed-second-0002")
GEMINI_KEY = "g-embed-key-0001"
MODELS = {
    "openai": "openai/text-embedding-3-small",
    "gemini": "gemini/gemini-embedding-001",
    "ollama": "ollama/nomic-embed-text",
}
GROUP = "embed-anywhere"
PRICE = 0.02  # USD per million input tokens, for the OpenAI-compatible model
FAST = {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "max_attempts": 2}


@dataclass
class EmbedSetup:
    gw: LiveGateway
    openai: FakeOpenAI
    gemini: FakeGemini
    ollama: FakeOllama

    def fake(self, kind: str) -> Any:
        return {"openai": self.openai, "gemini": self.gemini, "ollama": self.ollama}[kind]

    def post(self, path: str, body: Any, **headers: str) -> httpx.Response:
        auth = headers or {"Authorization": f"Bearer {self.gw.key}"}
        return httpx.post(self.gw.base + path, json=body, headers=auth, timeout=30)

    def ledger(self) -> list[dict[str, Any]]:
        """Every ledger row, oldest first (GET /admin/failures flushes the buffer first)."""
        admin = {"admin-secret": ADMIN_SECRET}
        assert httpx.get(self.gw.base + "/admin/failures", headers=admin).status_code == 200
        with sqlite3.connect(self.gw.db_path) as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM ledger ORDER BY ts")]

    def row(self, request_id: str) -> dict[str, Any]:
        rows = [r for r in self.ledger() if r["id"] == request_id]
        assert len(rows) == 1, rows
        return rows[0]


def embed_config(oa: FakeOpenAI, gm: FakeGemini, ol: FakeOllama, **extra: Any) -> dict[str, Any]:
    return {
        "providers": {
            "openai": {
                "type": "openai",
                "base_url": oa.base_url,
                "keys": list(OA_KEYS),
                "models": ["text-embedding-3-small"],
            },
            "gemini": {
                "type": "gemini",
                "base_url": gm.base_url,
                "keys": [GEMINI_KEY],
                "models": ["gemini-embedding-001"],
            },
            "ollama": {"type": "ollama", "base_url": ol.base_url, "models": ["nomic-embed-text"]},
            "claude": {
                "type": "anthropic",
                "base_url": "http://127.0.0.1:9",
                "keys": ["sk-ant-none"],
                "models": ["claude-sonnet-4-5"],
            },
        },
        "routing": {"groups": {GROUP: [MODELS["openai"], MODELS["gemini"]]}},
        "pricing": {MODELS["openai"]: {"input_per_mtok": PRICE, "output_per_mtok": 0}},
        "retries": FAST,
        "admin_secret": ADMIN_SECRET,
        **extra,
    }


@pytest.fixture
def embed_setup(live_gateway: Callable[..., LiveGateway]) -> Iterator[Callable[..., EmbedSetup]]:
    """Factory: `embed_setup(**config_extra)` -> the gateway and its three fakes."""
    fakes: list[Any] = []

    def start(**extra: Any) -> EmbedSetup:
        oa, gm = FakeOpenAI().start(), FakeGemini().start()
        ol = FakeOllama(models=["nomic-embed-text"]).start()
        fakes.extend([oa, gm, ol])
        return EmbedSetup(live_gateway(embed_config(oa, gm, ol, **extra)), oa, gm, ol)

    yield start
    for fake in fakes:
        fake.stop()
