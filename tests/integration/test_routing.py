"""SPEC §3 routing: explicit provider names, bare-name prefixes, aliases, groups, the priority
chain with default models, fallback before the first byte, and the model list."""

from __future__ import annotations

import httpx
import openai
import pytest

from relaygate.config.model import Config
from relaygate.errors import InvalidRequest, ModelNotFound
from relaygate.gateway import build_providers
from relaygate.routing.router import Router
from relaygate.types import Target
from tests.conftest import openai_provider
from tests.fakes.openai_upstream import FakeOpenAI, Reply

FAST = {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "max_attempts": 2}
MSG = [{"role": "user", "content": "route me"}]


def router(data):
    config = Config.model_validate(data)
    return Router(config.routing, build_providers(config))


ROUTING = {
    "providers": {
        "openai": {"keys": ["sk-o"], "base_url": "http://127.0.0.1:9/v1"},
        "anthropic": {"keys": ["sk-a"], "base_url": "http://127.0.0.1:9"},
        "gemini": {"keys": ["g"], "base_url": "http://127.0.0.1:9"},
        "groq": {
            "keys": ["gsk"],
            "base_url": "http://127.0.0.1:9/openai/v1",
            "models": ["llama-3.1-8b-instant"],
        },
        "openrouter": {"keys": ["or"], "base_url": "http://127.0.0.1:9/api/v1"},
        "local": {
            "type": "openai",
            "base_url": "http://127.0.0.1:9/v1",
            "models": ["qwen3-8b", "meta-llama/Llama-3.2"],
        },
    },
    "routing": {
        "priority": ["groq", "local"],
        "default_models": {"groq": "llama-3.1-8b-instant", "local": "qwen3-8b"},
        "aliases": {"fast": "groq/llama-3.1-8b-instant", "cheap": "fast"},
        "groups": {"smart": ["anthropic/claude-sonnet-4-5", "openai/gpt-4.1", "fast"]},
    },
}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("groq/llama-3.1-8b-instant", [("groq", "llama-3.1-8b-instant")]),
        ("groq:gemma2-9b-it", [("groq", "gemma2-9b-it")]),
        ("openrouter/openai/gpt-4o-mini", [("openrouter", "openai/gpt-4o-mini")]),
        ("gpt-4o-mini", [("openai", "gpt-4o-mini")]),
        ("o3-mini", [("openai", "o3-mini")]),
        ("chatgpt-4o-latest", [("openai", "chatgpt-4o-latest")]),
        ("claude-sonnet-4-5", [("anthropic", "claude-sonnet-4-5")]),
        ("gemini-2.5-flash", [("gemini", "gemini-2.5-flash")]),
        ("gemma-3-27b-it", [("gemini", "gemma-3-27b-it")]),
        ("qwen3-8b", [("local", "qwen3-8b")]),  # a provider that lists it
        ("meta-llama/Llama-3.2", [("local", "meta-llama/Llama-3.2")]),
        ("cheap", [("groq", "llama-3.1-8b-instant")]),  # alias of an alias
        (
            "smart",
            [
                ("anthropic", "claude-sonnet-4-5"),
                ("openai", "gpt-4.1"),
                ("groq", "llama-3.1-8b-instant"),
            ],
        ),
        (None, [("groq", "llama-3.1-8b-instant"), ("local", "qwen3-8b")]),
    ],
)
def test_model_names_route_per_spec(name, expected):
    assert router(ROUTING).resolve(name) == [Target(p, m) for p, m in expected]


def test_unknown_model_and_no_default():
    r = router(ROUTING)
    with pytest.raises(ModelNotFound):
        r.resolve("mystery-model")
    with pytest.raises(ModelNotFound):
        r.resolve("nosuchprovider/x")
    bare = router({"providers": {"local": {"type": "openai", "base_url": "http://x/v1"}}})
    with pytest.raises(InvalidRequest):
        bare.resolve(None)


def test_alias_loops_are_refused_not_followed_forever():
    data = {**ROUTING, "routing": {"aliases": {"a": "b", "b": "a"}}}
    with pytest.raises(ModelNotFound):
        router(data).resolve("a")


@pytest.fixture
def second_fake():
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()


def test_group_falls_back_to_the_next_target_before_the_first_byte(
    live_gateway, fake_openai, second_fake
):
    fake_openai.default = Reply(status=503)
    gw = live_gateway(
        {
            "providers": {
                "first": openai_provider(fake_openai, ["sk-1"]),
                "second": openai_provider(second_fake, ["sk-2"]),
            },
            "routing": {"groups": {"smart": ["first/gpt-4o-mini", "second/gpt-4o-mini"]}},
            "retries": FAST,
        }
    )
    client = openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="smart", messages=MSG)
    assert raw.headers["x-relaygate-provider"] == "second"
    assert raw.headers["x-relaygate-attempts"] == "3"  # two on the first target, one here
    assert raw.parse().choices[0].message.content == "Echo: route me"
    streamed = client.chat.completions.create(model="smart", messages=MSG, stream=True)
    assert (
        "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "Echo: route me"
    )


def test_the_clients_own_error_is_not_retried_on_the_next_target(
    live_gateway, fake_openai, second_fake
):
    from tests.fakes.openai_upstream import errors

    fake_openai.default = Reply(status=400, error=errors.context_length())
    gw = live_gateway(
        {
            "providers": {
                "first": openai_provider(fake_openai, ["sk-1"]),
                "second": openai_provider(second_fake, ["sk-2"]),
            },
            "routing": {"groups": {"smart": ["first/gpt-4o-mini", "second/gpt-4o-mini"]}},
            "retries": FAST,
        }
    )
    answer = httpx.post(
        gw.v1 + "/chat/completions", headers=gw.headers(), json={"model": "smart", "messages": MSG}
    )
    assert answer.status_code == 400 and second_fake.calls() == []


def test_priority_chain_with_default_models_when_no_model_is_given(
    live_gateway, fake_openai, second_fake
):
    fake_openai.default = Reply(
        status=429, error={"error": {"message": "slow down", "code": "rate_limit_exceeded"}}
    )
    gw = live_gateway(
        {
            "providers": {
                "first": openai_provider(fake_openai, ["sk-1"]),
                "second": openai_provider(second_fake, ["sk-2"]),
            },
            "routing": {
                "priority": ["first", "second"],
                "default_models": {"first": "m-one", "second": "m-two"},
            },
            "retries": FAST,
        }
    )
    answer = httpx.post(gw.v1 + "/chat/completions", headers=gw.headers(), json={"messages": MSG})
    assert answer.status_code == 200
    assert answer.headers["x-relaygate-model"] == "m-two"
    assert [c.json["model"] for c in fake_openai.calls()] == ["m-one"]
    assert [c.json["model"] for c in second_fake.calls()] == ["m-two"]


def test_a_target_that_cannot_take_the_request_passes_it_on(live_gateway, fake_openai):
    gw = live_gateway(
        {
            "providers": {
                "gemini": {"keys": ["g-key"], "base_url": "http://127.0.0.1:9"},
                "up": openai_provider(fake_openai, ["sk-1"]),
            },
            "routing": {"groups": {"vision": ["gemini/gemini-2.5-flash", "up/gpt-4o-mini"]}},
            "retries": FAST,
        }
    )
    image = {
        "role": "user",
        "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        ],
    }
    answer = httpx.post(
        gw.v1 + "/chat/completions",
        headers=gw.headers(),
        json={"model": "vision", "messages": [image]},
    )
    assert answer.status_code == 200 and answer.headers["x-relaygate-provider"] == "up"
    assert answer.headers["x-relaygate-attempts"] == "1"
    alone = httpx.post(
        gw.v1 + "/chat/completions",
        headers=gw.headers(),
        json={"model": "gemini/gemini-2.5-flash", "messages": [image]},
    )
    assert alone.status_code == 400 and alone.json()["error"]["type"] == "invalid_request_error"
    gemini = next(s for s in gw.gateway.key_states() if s["provider"] == "gemini")
    assert gemini["requests_total"] == 0 and gemini["state"] == "ready"


def test_models_lists_every_routable_model_and_alias(live_gateway, fake_openai):
    fake_openai.listed_models = []  # nothing discovered: the configured names alone
    gw = live_gateway(
        {
            "providers": {"up": openai_provider(fake_openai, ["sk-1"], models=["a", "b"])},
            "routing": {
                "aliases": {"fast": "up/a"},
                "groups": {"both": ["up/a", "up/b"]},
                "default_models": {"up": "c"},
            },
        }
    )
    listed = openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0).models.list()
    ids = [m.id for m in listed.data]
    assert ids == ["up/a", "up/b", "up/c", "fast", "both"]
    assert all(m.object == "model" for m in listed.data)
