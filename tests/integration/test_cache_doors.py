"""The response cache through every front door (SPEC §7b), end to end: the real server, the
official SDKs, a fake upstream that counts its calls. A whole answer and a stream share one entry
(the key ignores `stream`), and whichever came first, the other is served from it in the door's
own format: the SDKs' stream helpers parse the replayed streams. Cache-Control bypasses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai

from tests.integration._doors import WEATHER_CALL, Served

CACHE = {"cache": {"enabled": True}}
HI = [{"role": "user", "content": "Tell me about Paris"}]


def served_by(door_upstream: Callable[..., Served], kind: str = "openai", **cache: Any) -> Served:
    served = door_upstream(kind, {"cache": {"enabled": True, **cache}})
    served.reply(text="Paris is the capital of France.", usage=(12, 7))
    return served


def calls(served: Served) -> int:
    return len(served.fake.calls())


def oai(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.gw.v1, api_key=served.gw.key, max_retries=0, timeout=10)


def ant(served: Served) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=served.gw.base, api_key=served.gw.key, max_retries=0, timeout=10
    )


# --- OpenAI chat -------------------------------------------------------------------------------
def test_chat_miss_then_hit_whole_and_streamed(door_upstream):
    served = served_by(door_upstream)
    client = oai(served)
    first = client.chat.completions.with_raw_response.create(model=served.model, messages=HI)
    assert first.headers["x-relaygate-cache"] == "miss"
    assert first.headers["x-relaygate-attempts"] == "1"
    second = client.chat.completions.with_raw_response.create(model=served.model, messages=HI)
    assert second.headers["x-relaygate-cache"] == "hit"
    assert second.headers["x-relaygate-provider"] == "openai"
    assert second.headers["x-relaygate-model"] == "gpt-4o-mini"
    assert second.headers["x-relaygate-key-id"] == "cache"
    assert second.headers["x-relaygate-attempts"] == "0"
    assert second.parse().choices[0].message.content == "Paris is the capital of France."
    assert second.parse().usage.total_tokens == 19
    # the same body streamed: replayed from the whole answer, usage included when asked
    stream = client.chat.completions.create(
        model=served.model, messages=HI, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Paris is the capital of France."
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert calls(served) == 1


def test_chat_stream_is_stored_and_served_whole_with_tool_calls(door_upstream):
    served = served_by(door_upstream)
    served.reply(text=None, tool_calls=[WEATHER_CALL], usage=(20, 9))
    client = oai(served)
    with client.chat.completions.with_streaming_response.create(
        model=served.model, messages=HI, stream=True
    ) as raw:
        assert raw.headers["x-relaygate-cache"] == "miss"
        assert "data: [DONE]" in raw.read().decode()
    answer = client.chat.completions.with_raw_response.create(model=served.model, messages=HI)
    assert answer.headers["x-relaygate-cache"] == "hit"
    message = answer.parse().choices[0].message
    assert message.tool_calls[0].function.name == "get_weather"
    assert message.tool_calls[0].function.arguments == '{"city": "Paris"}'
    assert answer.parse().choices[0].finish_reason == "tool_calls"
    assert answer.parse().usage.prompt_tokens == 20
    assert calls(served) == 1


def test_cache_control_bypasses_without_reading_or_writing(door_upstream):
    served = served_by(door_upstream)
    url, body = served.gw.v1 + "/chat/completions", {"model": served.model, "messages": HI}
    for value in ("no-cache", "no-store", "max-age=0, No-Store"):
        answer = httpx.post(url, json=body, headers=served.gw.headers(**{"Cache-Control": value}))
        assert answer.status_code == 200 and answer.headers["x-relaygate-cache"] == "bypass"
    assert calls(served) == 3
    assert (
        httpx.post(url, json=body, headers=served.gw.headers()).headers["x-relaygate-cache"]
        == "miss"
    )  # nothing was written by the bypassed ones
    answer = httpx.post(url, json=body, headers=served.gw.headers(**{"Cache-Control": "no-cache"}))
    assert answer.headers["x-relaygate-cache"] == "bypass"  # nor read
    assert calls(served) == 5


def test_disabled_cache_says_bypass_and_always_calls_upstream(door_upstream):
    served = door_upstream("openai")
    client = oai(served)
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(model=served.model, messages=HI)
        assert raw.headers["x-relaygate-cache"] == "bypass"
    assert calls(served) == 2


def test_ignored_fields_share_an_entry_and_others_do_not(door_upstream):
    served = served_by(door_upstream)
    url = served.gw.v1 + "/chat/completions"

    def post(**extra: Any) -> str:
        body = {"model": served.model, "messages": HI, **extra}
        return httpx.post(url, json=body, headers=served.gw.headers()).headers["x-relaygate-cache"]

    assert post() == "miss"
    assert post(user="someone", metadata={"a": "b"}) == "hit"
    assert post(temperature=0.5) == "miss"
    assert post(temperature=0.5, user="x") == "hit"
    assert calls(served) == 2


# --- Anthropic Messages ------------------------------------------------------------------------
def test_messages_hit_and_replayed_stream_through_the_sdk(door_upstream):
    served = served_by(door_upstream)
    client = ant(served)
    first = client.messages.with_raw_response.create(model=served.model, max_tokens=64, messages=HI)
    assert first.headers["x-relaygate-cache"] == "miss"
    hit = client.messages.with_raw_response.create(model=served.model, max_tokens=64, messages=HI)
    assert hit.headers["x-relaygate-cache"] == "hit"
    message = hit.parse()
    assert message.content[0].text == "Paris is the capital of France."
    assert message.id == "msg_" + hit.headers["x-request-id"].removeprefix("req_")  # fresh id
    assert message.stop_reason == "end_turn" and message.usage.output_tokens == 7
    with client.messages.stream(model=served.model, max_tokens=64, messages=HI) as stream:
        assert "".join(stream.text_stream) == "Paris is the capital of France."
        final = stream.get_final_message()
    assert final.stop_reason == "end_turn" and final.usage.input_tokens == 12
    assert calls(served) == 1


def test_messages_stream_first_then_whole_hit(door_upstream):
    served = served_by(door_upstream)
    client = ant(served)
    with client.messages.stream(model=served.model, max_tokens=64, messages=HI) as stream:
        stream.get_final_message()
    message = client.messages.create(model=served.model, max_tokens=64, messages=HI)
    assert message.content[0].text == "Paris is the capital of France."
    assert calls(served) == 1


def test_passed_through_messages_answer_is_served_whole_only(door_upstream):
    """An Anthropic target behind the Messages door passes bodies through: its whole answer is
    kept as the door's own bytes and served to whole requests; a stream request is a miss."""
    served = served_by(door_upstream, "anthropic")
    client = ant(served)
    assert client.messages.create(model=served.model, max_tokens=64, messages=HI).content
    hit = client.messages.with_raw_response.create(model=served.model, max_tokens=64, messages=HI)
    assert hit.headers["x-relaygate-cache"] == "hit"
    assert hit.parse().content[0].text == "Paris is the capital of France."
    with client.messages.stream(model=served.model, max_tokens=64, messages=HI) as stream:
        assert "".join(stream.text_stream) == "Paris is the capital of France."
    assert calls(served) == 2


# --- OpenAI Responses --------------------------------------------------------------------------
def test_responses_hit_and_replayed_stream_through_the_sdk(door_upstream):
    served = served_by(door_upstream, "groq")
    client = oai(served)
    first = client.responses.with_raw_response.create(model=served.model, input="Paris?")
    assert first.headers["x-relaygate-cache"] == "miss"
    hit = client.responses.with_raw_response.create(model=served.model, input="Paris?")
    assert hit.headers["x-relaygate-cache"] == "hit"
    answer = hit.parse()
    assert answer.output_text == "Paris is the capital of France."
    assert answer.id == "resp_" + hit.headers["x-request-id"].removeprefix("req_")
    with client.responses.stream(model=served.model, input="Paris?") as stream:
        final = stream.get_final_response()
    assert final.output_text == "Paris is the capital of France."
    assert final.usage is not None and final.usage.output_tokens == 7
    assert calls(served) == 1


# --- Gemini ------------------------------------------------------------------------------------
def test_gemini_generate_and_stream_share_an_entry(door_upstream):
    served = served_by(door_upstream)
    client = genai.Client(
        api_key=served.gw.key, http_options={"base_url": served.gw.base, "timeout": 10_000}
    )
    first = client.models.generate_content(model=served.model, contents="Paris?")
    assert first.text == "Paris is the capital of France."
    chunks = list(client.models.generate_content_stream(model=served.model, contents="Paris?"))
    assert "".join(c.text or "" for c in chunks) == "Paris is the capital of France."
    assert chunks[-1].usage_metadata.candidates_token_count == 7
    again = client.models.generate_content(model=served.model, contents="Paris?")
    assert again.text == "Paris is the capital of France."
    assert calls(served) == 1
    # the same request by hand (the key reads the model from the path)
    url = f"{served.gw.base}/v1beta/models/openai/gpt-4o-mini:generateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": "Paris?"}]}]}
    answer = httpx.post(url, json=body, headers={"x-goog-api-key": served.gw.key})
    assert answer.headers["x-relaygate-cache"] == "hit"
    assert calls(served) == 1


@pytest.mark.parametrize("route", ["/v1/messages", "/v1/responses", "/v1/chat/completions"])
def test_doors_do_not_share_entries(door_upstream, route):
    """The same words through two doors are two entries (the door is part of the key)."""
    served = served_by(door_upstream)
    chat = {"model": served.model, "messages": HI, "max_tokens": 64}
    httpx.post(served.gw.v1 + "/chat/completions", json=chat, headers=served.gw.headers())
    body = {"model": served.model, "max_tokens": 64, "messages": HI}
    if route == "/v1/responses":
        body = {"model": served.model, "input": HI, "max_output_tokens": 64}
    answer = httpx.post(served.gw.base + route, json=body, headers=served.gw.headers())
    expected = "hit" if route == "/v1/chat/completions" else "miss"
    assert answer.headers["x-relaygate-cache"] == expected


# --- embeddings and a seed route (door-generic) --------------------------------------------------
def test_embeddings_are_cached_as_the_upstreams_own_answer(door_upstream):
    served = served_by(door_upstream)
    client = oai(served)
    first = client.embeddings.with_raw_response.create(
        model=served.model, input=["alpha", "beta"], encoding_format="float"
    )
    assert first.headers["x-relaygate-cache"] == "miss"
    hit = client.embeddings.with_raw_response.create(
        model=served.model, input=["alpha", "beta"], encoding_format="float"
    )
    assert hit.headers["x-relaygate-cache"] == "hit"
    assert [d.embedding for d in hit.parse().data] == [d.embedding for d in first.parse().data]
    assert hit.parse().usage.prompt_tokens == first.parse().usage.prompt_tokens
    other = client.embeddings.with_raw_response.create(
        model=served.model, input=["alpha"], encoding_format="float"
    )
    assert other.headers["x-relaygate-cache"] == "miss"
    assert calls(served) == 2


def test_a_seed_route_is_cached(door_upstream):
    served = door_upstream("openai", {"cache": {"enabled": True}})
    served.reply(text="Seeded.", usage=(3, 2))
    url = served.gw.base + "/chat/json"
    words = []
    for _ in range(2):
        answer = httpx.post(
            url, json={"prompt": "hi", "model": served.model}, headers=served.gw.headers()
        )
        assert answer.status_code == 200 and answer.json()["response"] == "Seeded."
        words.append(answer.headers["x-relaygate-cache"])
    assert words == ["miss", "hit"]
    assert calls(served) == 1
