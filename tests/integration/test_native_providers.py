"""Anthropic, Gemini and Ollama end to end: the official openai SDK -> the gateway on a real socket
-> fake native upstreams on real sockets speaking their exact formats. The client must see the same
text, tool calls and usage the upstream sent, streamed and not, and the key pool must act on each
provider's own error bodies (SPEC §4)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import openai
import pytest

from relaygate.keys.pool import key_id
from tests.fakes._native import Reply
from tests.fakes._server import free_port
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.anthropic_upstream import errors as anthropic_errors
from tests.fakes.gemini_upstream import FakeGemini
from tests.fakes.gemini_upstream import errors as gemini_errors
from tests.fakes.ollama_upstream import FakeOllama

FAST = {"backoff_base_s": 0.01, "backoff_max_s": 0.05}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
CALLS = [
    {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    {"name": "get_weather", "arguments": '{"city": "Lyon"}'},
]


@pytest.fixture
def fake_anthropic() -> Iterator[FakeAnthropic]:
    fake = FakeAnthropic().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake_gemini() -> Iterator[FakeGemini]:
    fake = FakeGemini().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake_ollama() -> Iterator[FakeOllama]:
    fake = FakeOllama(models=["llama3.2"]).start()
    yield fake
    fake.stop()


@pytest.fixture
def serve(live_gateway):
    """Factory: a gateway with one native provider in front of a fake, and an SDK client."""
    clients: list[openai.OpenAI] = []

    def start(name: str, fake: Any, keys: list[str] | None = None, **extra: Any):
        entry: dict[str, Any] = {"base_url": fake.base_url, **extra}
        if keys is not None:
            entry["keys"] = keys
        gw = live_gateway({"providers": {name: entry}, "retries": FAST})
        client = openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0, timeout=10)
        clients.append(client)
        return gw, client

    yield start
    for client in clients:
        client.close()


def state(gw, provider: str, key: str) -> dict[str, Any]:
    kid = key_id(provider, key)
    return next(s for s in gw.gateway.key_states() if s["key_id"] == kid)


def collect(stream) -> dict[str, Any]:
    """Text, tool calls (concatenated per index), finish reason, usage and chunks of a stream."""
    text, calls, finish, usage, chunks = "", {}, None, None, []
    for chunk in stream:
        chunks.append(chunk)
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
            for call in choice.delta.tool_calls or ():
                slot = calls.setdefault(call.index, {"id": None, "name": None, "arguments": ""})
                if call.id:
                    slot["id"], slot["name"] = call.id, call.function.name
                slot["arguments"] += call.function.arguments or ""
    return {"text": text, "calls": calls, "finish": finish, "usage": usage, "chunks": chunks}


def stream(client, model: str, messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    options = {"include_usage": True}
    return collect(
        client.chat.completions.create(
            model=model, messages=messages, stream=True, stream_options=options, **extra
        )
    )


def history(calls: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """A conversation where the assistant called tools and the tools answered."""
    return [
        {"role": "user", "content": "Weather in Paris and Lyon?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
                for cid, name, args in calls
            ],
        },
        *[
            {"role": "tool", "tool_call_id": cid, "content": f"{i + 20}C"}
            for i, (cid, _, _) in enumerate(calls)
        ],
    ]


# --- Anthropic ----------------------------------------------------------------------------------
def test_anthropic_text_usage_and_request_shape(serve, fake_anthropic):
    fake_anthropic.script("sk-ant-1", Reply(usage=(30, 4), cached=100))
    _, client = serve("anthropic", fake_anthropic, ["sk-ant-1"])
    answer = client.chat.completions.create(
        model="claude-sonnet-4-5",
        messages=[
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "hello claude"},
        ],
        temperature=1.7,
    )
    assert answer.choices[0].message.content == "Echo: hello claude"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.model == "claude-sonnet-4-5"
    usage = answer.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (130, 4, 134)
    assert usage.prompt_tokens_details.cached_tokens == 100
    (call,) = fake_anthropic.calls("sk-ant-1")
    assert call.headers["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in call.headers
    assert call.json["system"] == "Be terse."
    assert call.json["max_tokens"] == 4096 and call.json["temperature"] == 1.0
    assert call.json["messages"] == [{"role": "user", "content": "hello claude"}]


def test_anthropic_stream_text_and_usage(serve, fake_anthropic):
    fake_anthropic.script(
        "sk-ant-1", Reply(text="one two three four", usage=(12, 9), split_writes=True)
    )
    _, client = serve("anthropic", fake_anthropic, ["sk-ant-1"])
    got = stream(client, "claude-sonnet-4-5", [{"role": "user", "content": "count"}])
    assert got["text"] == "one two three four"
    assert got["finish"] == "stop"
    assert (got["usage"].prompt_tokens, got["usage"].completion_tokens) == (12, 9)
    first = got["chunks"][0].choices[0].delta
    assert first.role == "assistant" and first.content == ""
    assert got["chunks"][-1].choices == []
    assert len({c.id for c in got["chunks"]}) == 1


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
def test_anthropic_tool_calls_both_ways(serve, fake_anthropic, streamed):
    fake_anthropic.script("sk-ant-1", Reply(text="Checking both.", tool_calls=CALLS), Reply())
    _, client = serve("anthropic", fake_anthropic, ["sk-ant-1"])
    messages = [{"role": "user", "content": "Weather in Paris and Lyon?"}]
    if streamed:
        got = stream(client, "claude-sonnet-4-5", messages, tools=[WEATHER])
        calls = [(c["id"], c["name"], c["arguments"]) for _, c in sorted(got["calls"].items())]
        text, finish = got["text"], got["finish"]
    else:
        answer = client.chat.completions.create(
            model="claude-sonnet-4-5", messages=messages, tools=[WEATHER]
        )
        message = answer.choices[0].message
        calls = [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls]
        text, finish = message.content, answer.choices[0].finish_reason
    assert text == "Checking both."
    assert finish == "tool_calls"
    assert [(n, json.loads(a)) for _, n, a in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_weather", {"city": "Lyon"}),
    ]
    first = fake_anthropic.calls()[0].json
    assert first["tools"][0]["input_schema"] == WEATHER["function"]["parameters"]
    # the tool results go back as one user message of tool_result blocks
    client.chat.completions.create(model="claude-sonnet-4-5", messages=history(calls))
    sent = fake_anthropic.calls()[-1].json["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert [b["type"] for b in sent[1]["content"]] == ["tool_use", "tool_use"]
    assert sent[2]["content"] == [
        {"type": "tool_result", "tool_use_id": calls[0][0], "content": "20C"},
        {"type": "tool_result", "tool_use_id": calls[1][0], "content": "21C"},
    ]


@pytest.mark.parametrize(
    ("reply", "expected_state"),
    [
        (Reply(status=529, error=anthropic_errors.overloaded()), "ready"),
        (Reply(status=400, error=anthropic_errors.credit_balance()), "exhausted"),
        (Reply(status=401, error=anthropic_errors.invalid_key()), "invalid"),
        (
            Reply(status=429, error=anthropic_errors.rate_limit(), headers={"retry-after": "33"}),
            "cooling",
        ),
    ],
    ids=["529-overloaded", "400-credit", "401-key", "429-rate"],
)
def test_anthropic_errors_move_to_the_next_key(serve, fake_anthropic, reply, expected_state):
    fake_anthropic.script("sk-ant-a", reply)
    gw, client = serve(
        "anthropic",
        fake_anthropic,
        ["sk-ant-a", "sk-ant-b"],
        key_strategy="round_robin",
    )
    raw = client.chat.completions.with_raw_response.create(
        model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.parse().choices[0].message.content == "Echo: hi"
    assert raw.headers["x-relaygate-attempts"] == "2"
    assert raw.headers["x-relaygate-key-id"] == key_id("anthropic", "sk-ant-b")
    a = state(gw, "anthropic", "sk-ant-a")
    assert a["state"] == expected_state
    if expected_state == "cooling":
        assert 30 <= a["retry_in_s"] <= 33


@pytest.mark.parametrize("days", [1, 3])
def test_anthropic_usage_limit_parks_the_key_until_the_date_in_the_message(
    serve, fake_anthropic, days
):
    """Until the date the message names, but never longer than 48 h (SPEC §8a)."""
    day = (datetime.now(UTC) + timedelta(days=days)).strftime("%Y-%m-%d")
    fake_anthropic.script("sk-ant-a", Reply(status=400, error=anthropic_errors.usage_limit(day)))
    gw, client = serve(
        "anthropic",
        fake_anthropic,
        ["sk-ant-a", "sk-ant-b"],
        key_strategy="round_robin",
    )
    client.chat.completions.create(model="claude-x", messages=[{"role": "user", "content": "hi"}])
    a = state(gw, "anthropic", "sk-ant-a")
    assert a["state"] == "exhausted"
    named = datetime.fromisoformat(f"{day}T00:00:00+00:00").timestamp()
    if days == 1:
        assert a["until"] == named
    else:
        assert a["until"] < named
        assert abs(a["until"] - (time.time() + 48 * 3600)) < 60


def test_anthropic_prompt_too_long_goes_back_to_the_client_once(serve, fake_anthropic):
    fake_anthropic.script("sk-ant-a", Reply(status=400, error=anthropic_errors.prompt_too_long()))
    gw, client = serve("anthropic", fake_anthropic, ["sk-ant-a", "sk-ant-b"])
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="claude-sonnet-4-5", messages=[{"role": "user", "content": "long"}]
        )
    assert caught.value.code == "context_length_exceeded"
    assert "prompt is too long" in caught.value.message
    assert len(fake_anthropic.calls()) == 1
    assert state(gw, "anthropic", "sk-ant-a")["state"] == "ready"


def test_anthropic_overload_mid_stream_before_any_text_is_retried_on_another_key(
    serve, fake_anthropic
):
    fake_anthropic.script("sk-ant-a", Reply(inband_error_after=0))
    _, client = serve(
        "anthropic",
        fake_anthropic,
        ["sk-ant-a", "sk-ant-b"],
        key_strategy="round_robin",
    )
    got = stream(client, "claude-sonnet-4-5", [{"role": "user", "content": "again please"}])
    assert got["text"] == "Echo: again please"
    assert [c.key for c in fake_anthropic.calls()] == ["sk-ant-a", "sk-ant-b"]


def test_anthropic_overload_after_text_reaches_the_client_as_an_error(serve, fake_anthropic):
    fake_anthropic.script(
        "sk-ant-a", Reply(text="one two three", inband_error_after=2, chunk_delay_s=0.05)
    )
    _, client = serve("anthropic", fake_anthropic, ["sk-ant-a", "sk-ant-b"])
    received = ""
    with pytest.raises(openai.APIError, match="mid-stream"):
        for chunk in client.chat.completions.create(
            model="claude-sonnet-4-5", messages=[{"role": "user", "content": "x"}], stream=True
        ):
            received += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    assert received == "one two"
    assert len(fake_anthropic.calls()) == 1  # nothing is retried once a byte went out


# --- Gemini -------------------------------------------------------------------------------------
def test_gemini_text_usage_and_request_shape(serve, fake_gemini):
    fake_gemini.script("AIza-1", Reply(thinking="let me think", usage=(21, 5), cached=16))
    _, client = serve("gemini", fake_gemini, ["AIza-1"])
    answer = client.chat.completions.create(
        model="gemini-2.5-flash",
        messages=[
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "hello gemini"},
        ],
        max_tokens=50,
    )
    assert answer.choices[0].message.content == "Echo: hello gemini"
    assert answer.choices[0].finish_reason == "stop"
    usage = answer.usage
    # completion = candidates + thoughts; total as Gemini counts it
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (21, 8, 29)
    assert usage.completion_tokens_details.reasoning_tokens == 3
    assert usage.prompt_tokens_details.cached_tokens == 16
    (call,) = fake_gemini.calls()
    assert call.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert call.query == {} and call.headers["x-goog-api-key"] == "AIza-1"
    assert call.json["systemInstruction"] == {"parts": [{"text": "Be terse."}]}
    assert call.json["generationConfig"] == {"maxOutputTokens": 50}


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
def test_gemini_stream_text_and_usage(serve, fake_gemini, crlf):
    reply = Reply(text="alpha beta gamma", usage=(9, 3), crlf=crlf, split_writes=True)
    fake_gemini.script("AIza-1", reply)
    _, client = serve("gemini", fake_gemini, ["AIza-1"])
    got = stream(client, "gemini-2.5-flash", [{"role": "user", "content": "go"}])
    assert got["text"] == "alpha beta gamma"
    assert got["finish"] == "stop"
    assert (got["usage"].prompt_tokens, got["usage"].completion_tokens) == (9, 3)
    assert fake_gemini.calls()[0].path.endswith(":streamGenerateContent")
    assert fake_gemini.calls()[0].query == {"alt": "sse"}


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
def test_gemini_tool_calls_both_ways(serve, fake_gemini, streamed):
    fake_gemini.script("AIza-1", Reply(text="", tool_calls=CALLS), Reply())
    _, client = serve("gemini", fake_gemini, ["AIza-1"])
    messages = [{"role": "user", "content": "Weather in Paris and Lyon?"}]
    if streamed:
        got = stream(client, "gemini-2.5-flash", messages, tools=[WEATHER], tool_choice="required")
        calls = [(c["id"], c["name"], c["arguments"]) for _, c in sorted(got["calls"].items())]
        finish = got["finish"]
    else:
        answer = client.chat.completions.create(
            model="gemini-2.5-flash", messages=messages, tools=[WEATHER], tool_choice="required"
        )
        message = answer.choices[0].message
        calls = [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls]
        finish = answer.choices[0].finish_reason
    assert finish == "tool_calls"
    assert [(n, json.loads(a)) for _, n, a in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_weather", {"city": "Lyon"}),
    ]
    first = fake_gemini.calls()[0].json
    assert first["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    client.chat.completions.create(model="gemini-2.5-flash", messages=history(calls))
    sent = fake_gemini.calls()[-1].json["contents"]
    assert [c["role"] for c in sent] == ["user", "model", "user"]
    # the thought signature the model gave comes back on its function call
    assert all(p["thoughtSignature"] == "CikBcsjafFK168Ib" for p in sent[1]["parts"])
    assert sent[2]["parts"] == [
        {"functionResponse": {"name": "get_weather", "response": {"result": "20C"}}},
        {"functionResponse": {"name": "get_weather", "response": {"result": "21C"}}},
    ]


def test_gemini_per_day_quota_parks_key_1_until_pacific_midnight(serve, fake_gemini):
    fake_gemini.script("AIza-1", Reply(status=429, error=gemini_errors.per_day()))
    gw, client = serve("gemini", fake_gemini, ["AIza-1", "AIza-2"], key_strategy="round_robin")
    raw = client.chat.completions.with_raw_response.create(
        model="gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.parse().choices[0].message.content == "Echo: hi"
    assert raw.headers["x-relaygate-key-id"] == key_id("gemini", "AIza-2")
    one = state(gw, "gemini", "AIza-1")
    assert one["state"] == "exhausted"
    zone = ZoneInfo("America/Los_Angeles")
    tomorrow = datetime.now(zone).date() + timedelta(days=1)
    midnight = datetime.combine(tomorrow, datetime.min.time(), zone).timestamp()
    assert abs(one["until"] - midnight) < 2
    for _ in range(3):  # parked: never tried again today
        client.chat.completions.create(
            model="gemini-x", messages=[{"role": "user", "content": "h"}]
        )
    assert len(fake_gemini.calls("AIza-1")) == 1


@pytest.mark.parametrize(
    ("reply", "expected_state"),
    [
        (Reply(status=429, error=gemini_errors.per_minute("26s")), "cooling"),
        (Reply(status=400, error=gemini_errors.invalid_key()), "invalid"),
        (Reply(status=503, error=gemini_errors.overloaded()), "ready"),
    ],
    ids=["429-per-minute", "400-api-key-invalid", "503-overloaded"],
)
def test_gemini_errors_move_to_the_next_key(serve, fake_gemini, reply, expected_state):
    fake_gemini.script("AIza-1", reply)
    gw, client = serve("gemini", fake_gemini, ["AIza-1", "AIza-2"], key_strategy="round_robin")
    answer = client.chat.completions.create(
        model="gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content == "Echo: hi"
    one = state(gw, "gemini", "AIza-1")
    assert one["state"] == expected_state
    if expected_state == "cooling":
        assert 24 <= one["retry_in_s"] <= 26


def test_gemini_context_too_long_is_the_clients_400(serve, fake_gemini):
    fake_gemini.script("AIza-1", Reply(status=400, error=gemini_errors.too_many_tokens()))
    _, client = serve("gemini", fake_gemini, ["AIza-1", "AIza-2"])
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="gemini-2.5-flash", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.code == "context_length_exceeded"
    assert len(fake_gemini.calls()) == 1


def test_gemini_stream_cut_before_finish_reason_is_an_error(serve, fake_gemini):
    fake_gemini.script("AIza-1", Reply(text="one two three", cut_after=2))
    _, client = serve("gemini", fake_gemini, ["AIza-1"])
    received = ""
    with pytest.raises(openai.APIError, match="before it was complete"):
        for chunk in client.chat.completions.create(
            model="gemini-2.5-flash", messages=[{"role": "user", "content": "x"}], stream=True
        ):
            received += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    assert received == "one two"


def test_gemini_image_url_that_is_not_data_is_refused_without_a_call(serve, fake_gemini):
    _, client = serve("gemini", fake_gemini, ["AIza-1"])
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    with pytest.raises(openai.BadRequestError, match="data: URLs"):
        client.chat.completions.create(
            model="gemini-2.5-flash", messages=[{"role": "user", "content": [image]}]
        )
    assert fake_gemini.calls() == []


# --- Ollama -------------------------------------------------------------------------------------
def test_ollama_without_a_key_text_and_stream(serve, fake_ollama):
    fake_ollama.script(None, Reply(text="Hello from llama", usage=(26, 3), split_writes=True))
    _, client = serve("ollama", fake_ollama)
    answer = client.chat.completions.create(
        model="ollama/llama3.2",
        messages=[{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}],
        temperature=0.2,
    )
    assert answer.choices[0].message.content == "Hello from llama"
    assert answer.choices[0].finish_reason == "stop"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (26, 3)
    got = stream(client, "ollama/llama3.2", [{"role": "user", "content": "hi"}])
    assert got["text"] == "Hello from llama"
    assert (got["usage"].prompt_tokens, got["usage"].completion_tokens) == (26, 3)
    whole, streamed = (c.json for c in fake_ollama.calls())
    assert whole["stream"] is False and streamed["stream"] is True
    assert whole["messages"][0] == {"role": "system", "content": "Be terse."}
    assert whole["options"] == {"temperature": 0.2}
    assert all("Authorization" not in c.headers for c in fake_ollama.calls())


def test_ollama_tool_calls_stream_and_results(serve, fake_ollama):
    fake_ollama.script(None, Reply(text="", tool_calls=CALLS[:1]), Reply())
    _, client = serve("ollama", fake_ollama)
    got = stream(
        client, "ollama/llama3.2", [{"role": "user", "content": "Weather?"}], tools=[WEATHER]
    )
    assert got["finish"] == "tool_calls"
    (call,) = got["calls"].values()
    assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Paris"}
    client.chat.completions.create(
        model="ollama/llama3.2",
        messages=history([(call["id"], call["name"], call["arguments"])]),
    )
    sent = fake_ollama.calls()[-1].json["messages"]
    assert sent[1]["tool_calls"] == [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    ]
    assert sent[2] == {"role": "tool", "content": "20C", "tool_name": "get_weather"}


def test_ollama_unknown_model_is_a_404_for_the_client(serve, fake_ollama):
    _, client = serve("ollama", fake_ollama)
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(
            model="ollama/foo", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.code == "model_not_found"
    assert "try pulling it first" in caught.value.message
    assert len(fake_ollama.calls()) == 1


def test_ollama_error_line_after_text_reaches_the_client_as_an_error(serve, fake_ollama):
    # the first piece reaches the client before the error line (a delay between lines)
    fake_ollama.script(None, Reply(text="one two three", inband_error_after=1, chunk_delay_s=0.05))
    _, client = serve("ollama", fake_ollama)
    received = ""
    with pytest.raises(openai.APIError, match="mid-stream"):
        for chunk in client.chat.completions.create(
            model="ollama/llama3.2", messages=[{"role": "user", "content": "x"}], stream=True
        ):
            received += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    assert received == "one"
    assert len(fake_ollama.calls()) == 1


def test_ollama_connection_refused_is_a_server_failure(serve):
    class Closed:
        base_url = f"http://127.0.0.1:{free_port()}"

    started = time.monotonic()
    gw, client = serve("ollama", Closed())
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model="ollama/llama3.2", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.status_code == 502
    assert time.monotonic() - started < 3
    (only,) = gw.gateway.key_states()
    assert only["provider"] == "ollama"
