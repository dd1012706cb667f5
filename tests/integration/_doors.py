"""What the front-door end-to-end tests share: one gateway in front of one fake upstream of each
kind (OpenAI, Groq, Gemini, Ollama, Anthropic: real sockets, exact wire formats), scripted the
same way whatever the kind, so a test of a door runs over every provider."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import LiveGateway
from tests.fakes import _native
from tests.fakes import openai_upstream as oa
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.gemini_upstream import FakeGemini
from tests.fakes.ollama_upstream import FakeOllama

KINDS = ("openai", "groq", "gemini", "ollama", "anthropic")
MODELS = {
    "openai": "gpt-4o-mini",
    "groq": "llama-3.3-70b-versatile",
    "gemini": "gemini-2.5-flash",
    "ollama": "llama3.2",
    "anthropic": "claude-sonnet-4-5",
}
FAST = {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "max_attempts": 2}
WEATHER_CALL = {"name": "get_weather", "arguments": '{"city": "Paris"}'}


@dataclass
class Served:
    """A gateway with provider `kind` (named the same) in front of `fake`."""

    kind: str
    gw: LiveGateway
    fake: Any
    key: str  # the upstream key

    @property
    def model(self) -> str:
        return f"{self.kind}/{MODELS[self.kind]}"

    def reply(self, *, text: str | None = None, tool_calls: list[dict[str, Any]] | None = None,
              usage: tuple[int, int] | None = None) -> None:  # fmt: skip
        """Script the next answers: text and/or tool calls [{"name", "arguments"}]."""
        if isinstance(self.fake, oa.FakeOpenAI):
            self.fake.default = oa.Reply(text=text, tool_calls=tool_calls, usage=usage)
        else:
            self.fake.default = _native.Reply(text=text, tool_calls=tool_calls, usage=usage)

    def upstream_bodies(self) -> list[dict[str, Any]]:
        return [r.json for r in self.fake.calls()]


def _fake(kind: str) -> Any:
    if kind in ("openai", "groq"):
        return oa.FakeOpenAI()
    if kind == "gemini":
        return FakeGemini()
    if kind == "ollama":
        return FakeOllama(models=[MODELS["ollama"]])
    return FakeAnthropic()


def provider_entry(kind: str, fake: Any, key: str, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": kind, "base_url": fake.base_url, "models": [MODELS[kind]]}
    if kind != "ollama":
        entry["keys"] = [key]
    return {**entry, **extra}


@pytest.fixture
def door_upstream(live_gateway: Callable[..., LiveGateway]) -> Iterator[Callable[..., Served]]:
    """Factory: `door_upstream(kind, **provider_extra)` -> a Served gateway."""
    fakes: list[Any] = []

    def start(kind: str, config: dict[str, Any] | None = None, **extra: Any) -> Served:
        fake = _fake(kind).start()
        fakes.append(fake)
        key = f"sk-door-{kind}-0001"
        data = {"providers": {kind: provider_entry(kind, fake, key, **extra)}, "retries": FAST}
        gw = live_gateway({**data, **(config or {})})
        return Served(kind, gw, fake, key)

    yield start
    for fake in fakes:
        fake.stop()
