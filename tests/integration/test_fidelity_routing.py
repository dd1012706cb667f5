"""Issue 15, routing habits of the earlier gateways' users, through the real server: default
models in the `provider:model` form, `google` as another name of gemini, `extra_body`, model
discovery, bare names one provider lists, the wildcard alias, echo's honest model name."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from relaygate.config.load import load_config
from relaygate.config.model import Config
from relaygate.gateway import Gateway
from relaygate.http.app import create_app
from relaygate.routing.discovery import Discovery
from relaygate.transport.own import OwnTransport
from tests.conftest import CLIENT_KEY
from tests.fakes._server import UvicornServer
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.gemini_upstream import FakeGemini
from tests.fakes.ollama_upstream import FakeOllama
from tests.fakes.openai_upstream import FakeOpenAI, Reply
from tests.integration._proc import clean_env

MSG = [{"role": "user", "content": "hello there"}]
FAST = {"backoff_base_s": 0.01, "backoff_max_s": 0.02, "max_attempts": 3}


class Served:
    def __init__(self, gw: Gateway, server: UvicornServer) -> None:
        self.gw, self.server = gw, server
        self.v1 = server.base + "/v1"
        self.headers = {"Authorization": f"Bearer {CLIENT_KEY}"}

    def chat(self, **body: Any) -> httpx.Response:
        return httpx.post(
            self.v1 + "/chat/completions",
            headers=self.headers,
            json={"messages": MSG, **body},
            timeout=20,
        )

    def ids(self) -> list[str]:
        answer = httpx.get(self.v1 + "/models", headers=self.headers, timeout=10)
        assert answer.status_code == 200
        return [m["id"] for m in answer.json()["data"]]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    started: list[UvicornServer] = []

    def start(config: Config) -> Served:
        config.database_url = f"sqlite:///{tmp_path / f'gw{len(started)}.db'}"
        gw = Gateway(config)
        server = UvicornServer(create_app(gateway=gw, announce=lambda text: None)).start()
        started.append(server)
        return Served(gw, server)

    yield start
    for server in started:
        server.stop()


def from_env(tmp_path: Path, **env: str) -> Config:
    return load_config(environ={"PROXY_API_KEY": CLIENT_KEY, **env}, cwd=tmp_path)


@pytest.fixture
def fakes() -> Iterator[dict[str, Any]]:
    made = {
        "groq": FakeOpenAI(),
        "openrouter": FakeOpenAI(),
        "gemini": FakeGemini(),
        "ollama": FakeOllama(),
        "anthropic": FakeAnthropic(),
    }
    for fake in made.values():
        fake.start()
    yield made
    for fake in made.values():
        fake.stop()


def wait_for(check: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.05)


def test_default_models_in_the_prefix_form_reach_the_upstream_bare(tmp_path, fakes, serve):
    groq, router, ollama = fakes["groq"], fakes["openrouter"], fakes["ollama"]
    groq.default = router.default = Reply(status=503)
    config = from_env(
        tmp_path,
        GROQ_API_KEY="gsk-one",
        GROQ_BASE_URL=groq.base_url,
        GROQ_MODEL="groq:gemma2-9b-it",
        OPENROUTER_API_KEY="or-one",
        OPENROUTER_BASE_URL=router.base_url,
        OPENROUTER_MODEL="openrouter:openai/gpt-4o-mini",
        OLLAMA_BASE_URL=ollama.base_url,
        OLLAMA_MODEL="ollama:llama3",
        PROVIDERS_PRIORITY="groq,openrouter,ollama",
    )
    config.retries = config.retries.model_copy(update=FAST)
    config.routing.discover_every_s = 0
    gw = serve(config)
    answer = gw.chat()
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-relaygate-provider"] == "ollama"
    assert {c.json["model"] for c in groq.calls()} == {"gemma2-9b-it"}
    assert {c.json["model"] for c in router.calls()} == {"openai/gpt-4o-mini"}
    assert [c.json["model"] for c in ollama.calls()] == ["llama3"]
    # a default model that is the provider's own id with a slash stays whole
    kept = from_env(tmp_path, OPENROUTER_API_KEY="k", OPENROUTER_MODEL="openai/gpt-4o-mini")
    assert Gateway(kept).router.default_model("openrouter") == "openai/gpt-4o-mini"


def test_google_is_another_name_of_gemini(tmp_path, fakes, serve):
    gemini, groq = fakes["gemini"], fakes["groq"]
    config = from_env(
        tmp_path,
        GOOGLE_API_KEY="g-key-1",
        GOOGLE_BASE_URL=gemini.base_url,
        GOOGLE_MODEL="google:gemini-2.5-flash",
        GROQ_API_KEY="gsk-1",
        GROQ_BASE_URL=groq.base_url,
        PROVIDERS_PRIORITY="google,groq",
    )
    assert list(config.routing.priority) == ["google", "groq"]
    gw = serve(config)
    for model in (None, "google/gemini-2.0-flash", "google:gemini-2.0-flash-lite"):
        answer = gw.chat(**({"model": model} if model else {}))
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-relaygate-provider"] == "gemini"
    paths = [c.path for c in gemini.calls()]
    assert paths == [
        "/v1beta/models/gemini-2.5-flash:generateContent",
        "/v1beta/models/gemini-2.0-flash:generateContent",
        "/v1beta/models/gemini-2.0-flash-lite:generateContent",
    ]
    assert groq.calls() == []
    yaml_config = tmp_path / "relaygate.yaml"
    yaml_config.write_text(
        f"providers:\n  google:\n    keys: [g-key-2]\n    base_url: {gemini.base}\n"
    )
    assert list(load_config(environ={}, cwd=tmp_path).providers) == ["gemini"]


def test_an_unknown_name_in_the_priority_stops_start_up_with_one_line(tmp_path):
    env = clean_env(
        GROQ_API_KEY="gsk-1", PROVIDERS_PRIORITY="groq,nosuchprovider", PYTHONPATH=sys.path[0]
    )
    import relaygate

    env["PYTHONPATH"] = str(Path(relaygate.__file__).parent.parent)
    done = subprocess.run(
        [sys.executable, "-m", "relaygate", "serve", "--port", "1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "nosuchprovider" in lines[0] and "PROVIDERS_PRIORITY" in lines[0]
    assert "Traceback" not in done.stderr


def test_extra_body_is_merged_into_the_upstream_body(tmp_path, fakes, serve):
    groq, gemini = fakes["groq"], fakes["gemini"]
    config = Config.model_validate(
        {
            "providers": {
                "groq": {"keys": ["gsk-1"], "base_url": groq.base_url},
                "gemini": {"keys": ["g-1"], "base_url": gemini.base_url},
            },
            "clients": [{"name": "t", "key": CLIENT_KEY}],
            "routing": {"discover_every_s": 0},
        }
    )
    gw = serve(config)
    extra = {"reasoning_effort": "low", "stream_options": {"include_usage": True}}
    answer = gw.chat(model="groq/llama-3.3-70b-versatile", extra_body=extra)
    assert answer.status_code == 200, answer.text
    sent = groq.calls()[-1].json
    assert "extra_body" not in sent and sent["reasoning_effort"] == "low"
    client = openai.OpenAI(base_url=gw.v1, api_key=CLIENT_KEY, max_retries=0)
    streamed = client.chat.completions.create(
        model="groq/llama-3.3-70b-versatile",
        messages=MSG,  # type: ignore[arg-type]
        stream=True,
        extra_body={"extra_body": {"service_tier": "flex"}},
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    sent = groq.calls()[-1].json
    assert sent["service_tier"] == "flex" and "extra_body" not in sent and sent["stream"] is True
    native = gw.chat(
        model="gemini/gemini-2.5-flash",
        temperature=0.5,
        extra_body={"generationConfig": {"topK": 7}, "safetySettings": []},
    )
    assert native.status_code == 200, native.text
    body = gemini.calls()[-1].json
    assert body["generationConfig"]["topK"] == 7
    assert body["generationConfig"]["temperature"] == 0.5 and body["safetySettings"] == []
    assert "extra_body" not in body
    bad = gw.chat(model="groq/x", extra_body="nope")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "extra_body"


def test_models_are_discovered_listed_and_routed(tmp_path, fakes, serve):
    groq, gemini, ollama, anthropic = (
        fakes["groq"],
        fakes["gemini"],
        fakes["ollama"],
        fakes["anthropic"],
    )
    groq.listed_models = ["llama3-70b-8192", "gemma2-9b-it"]
    gemini.listed_models = ["gemini-2.5-flash"]
    ollama.listed_models = ["llama3", "qwen3:8b"]
    anthropic.listed_models = ["claude-sonnet-4-5"]
    config = Config.model_validate(
        {
            "providers": {
                "groq": {"keys": ["gsk-1"], "base_url": groq.base_url},
                "gemini": {"keys": ["g-1"], "base_url": gemini.base_url},
                "ollama": {"base_url": ollama.base_url},
                "anthropic": {"keys": ["sk-ant-1"], "base_url": anthropic.base_url},
                "echo": {},
            },
            "routing": {
                "aliases": {"fast": "groq/gemma2-9b-it", "*": "groq/llama3-70b-8192"},
                "groups": {"both": ["groq/gemma2-9b-it", "ollama/llama3"]},
            },
            "clients": [{"name": "t", "key": CLIENT_KEY}],
        }
    )
    gw = serve(config)
    wait_for(lambda: "anthropic/claude-sonnet-4-5" in gw.ids() and "ollama/llama3" in gw.ids())
    ids = gw.ids()
    for expected in (
        "groq/llama3-70b-8192",
        "groq/gemma2-9b-it",
        "gemini/gemini-2.5-flash",
        "ollama/qwen3:8b",
        "echo/echo",
        "fast",
        "both",
    ):
        assert expected in ids
    assert "*" not in ids and "gemini/text-embedding-004" not in ids
    listings = len(groq.listings)
    answer = gw.chat(model="llama3-70b-8192")  # a bare name only groq lists
    assert answer.status_code == 200 and answer.headers["x-relaygate-provider"] == "groq"
    assert groq.calls()[-1].json["model"] == "llama3-70b-8192"
    local = gw.chat(model="qwen3:8b")
    assert local.headers["x-relaygate-provider"] == "ollama"
    assert ollama.calls()[-1].json["model"] == "qwen3:8b"
    assert len(groq.listings) == listings  # never on a request's path
    assert set(groq.listings) == {"gsk-1"} and set(anthropic.listings) == {"sk-ant-1"}
    # a provider whose listing fails keeps the list it had
    groq.bad_keys.add("gsk-1")
    asyncio.run(discover_once(gw.gw))
    assert len(groq.listings) == listings + 1
    assert "groq/llama3-70b-8192" in gw.ids()


async def discover_once(gw: Gateway) -> None:
    """One discovery pass from the test's thread, on a client of its own."""
    client = OwnTransport()
    try:
        await Discovery(gw.providers, gw.pools, gw.router, lambda name: client).once()
    finally:
        await client.aclose()


def test_the_wildcard_alias_takes_any_unknown_name(tmp_path, fakes, serve):
    groq = fakes["groq"]
    config = Config.model_validate(
        {
            "providers": {"groq": {"keys": ["gsk-1"], "base_url": groq.base_url}},
            "routing": {"aliases": {"*": "groq/llama-3.3-70b-versatile"}},
            "clients": [{"name": "t", "key": CLIENT_KEY}],
        }
    )
    gw = serve(config)
    client = openai.OpenAI(base_url=gw.v1, api_key=CLIENT_KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-3.5-turbo",
        messages=MSG,  # type: ignore[arg-type]
    )
    assert raw.headers["x-relaygate-provider"] == "groq"
    assert groq.calls()[-1].json["model"] == "llama-3.3-70b-versatile"
    explicit = gw.chat(model="groq/gemma2-9b-it")  # a name that is known keeps its target
    assert explicit.status_code == 200 and groq.calls()[-1].json["model"] == "gemma2-9b-it"


def test_echo_answers_with_the_name_the_client_sent(tmp_path, serve):
    config = Config.model_validate({"clients": [{"name": "t", "key": CLIENT_KEY}]})
    gw = serve(config)
    client = openai.OpenAI(base_url=gw.v1, api_key=CLIENT_KEY, max_retries=0)
    whole = client.chat.completions.create(model="echo/hello", messages=MSG)  # type: ignore[arg-type]
    assert whole.model == "echo/hello" and whole.choices[0].message.content == "hello there"
    chunks = list(
        client.chat.completions.create(
            model="echo/hello",
            messages=MSG,  # type: ignore[arg-type]
            stream=True,
        )
    )
    assert {c.model for c in chunks} == {"echo/hello"}


def test_a_tiny_budget_is_shown_with_true_digits(live_gateway, fake_openai):
    from tests.conftest import openai_provider

    pricing = {"up/gpt-4o-mini": {"input_per_mtok": 1, "output_per_mtok": 1}}
    gw = live_gateway(
        {
            "providers": {"up": openai_provider(fake_openai, ["sk-up"])},
            "clients": [{"name": "tiny", "key": CLIENT_KEY, "monthly_budget_usd": 0.000012}],
            "pricing": pricing,
        }
    )
    answer = httpx.post(
        gw.v1 + "/chat/completions",
        headers=gw.headers(),
        json={"model": "up/gpt-4o-mini", "messages": MSG, "max_tokens": 100},
    )
    assert answer.status_code == 429
    message = answer.json()["error"]["message"]
    assert "$0.000012 reached" in message and "$0.00 " not in message
    assert "may cost up to $0.0001" in message
