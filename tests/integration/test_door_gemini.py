"""The Gemini native front door end to end (SPEC §7a, protocols.md §13) with the official
google-genai SDK against the real HTTP server, over every upstream kind: answers, streams, usage,
generation config, images, function calling both ways, countTokens, the model list (names with a
`/` routed back), and the ledger row. Errors, auth, budgets and passthrough are in
test_door_gemini_errors.py."""

from __future__ import annotations

import base64
import sqlite3
import time
from typing import Any

import orjson
import pytest
from google import genai
from google.genai import types

from relaygate.auth.clients import static_id
from tests.conftest import CLIENT_KEY
from tests.fakes._native import count_words
from tests.integration._doors import KINDS, MODELS, WEATHER_CALL

VERSIONS = (None, "v1beta")  # None: the SDK's default (v1)
SYSTEM = "You are terse."
# a 1x1 PNG whose base64 holds '+' and '/' (the SDK sends URL-safe base64)
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8"
    "/5+hHgAHggJ/PchI7wAAAABJRU5ErkJggg=="
)
WEATHER = types.Tool(
    function_declarations=[
        types.FunctionDeclaration(
            name="get_weather",
            description="The weather in a city",
            parameters=types.Schema(
                type=types.Type.OBJECT,
                properties={"city": types.Schema(type=types.Type.STRING)},
                required=["city"],
            ),
        )
    ]
)


def sdk(served: Any, version: str | None = None, key: str | None = None) -> genai.Client:
    options: dict[str, Any] = {"base_url": served.gw.base, "timeout": 10_000}
    if version:
        options["api_version"] = version
    return genai.Client(api_key=key or served.gw.key, http_options=options)


def last_body(served: Any) -> dict[str, Any]:
    calls = served.fake.calls()
    assert calls, "the upstream was not called"
    return calls[-1].json


def ledger_row(db_path: Any, request_id: str) -> dict[str, Any]:
    """The ledger row of a request (rows are flushed within 500 ms: a bounded poll)."""
    deadline = time.monotonic() + 3
    while True:
        with sqlite3.connect(db_path) as db:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM ledger WHERE id = ?", (request_id,)).fetchone()
        if row is not None or time.monotonic() > deadline:
            assert row is not None, f"no ledger row {request_id}"
            return dict(row)
        time.sleep(0.05)


def sampling_sent(kind: str, body: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(system text, temperature, max output tokens) as the upstream received them."""
    if kind == "gemini":
        config = body["generationConfig"]
        system = body["systemInstruction"]["parts"][0]["text"]
        return system, config["temperature"], config["maxOutputTokens"]
    if kind == "anthropic":
        system = body["system"]
        text = system if isinstance(system, str) else system[0]["text"]
        return text, body["temperature"], body["max_tokens"]
    first = body["messages"][0]
    assert first["role"] == "system", body
    if kind == "ollama":
        return first["content"], body["options"]["temperature"], body["options"]["num_predict"]
    return first["content"], body["temperature"], body.get("max_tokens")


def image_sent(kind: str, body: dict[str, Any]) -> bytes:
    """The image bytes the upstream received in the last user turn, in its own format."""
    if kind == "gemini":
        parts = body["contents"][-1]["parts"]
        inline = next(p["inlineData"] for p in parts if "inlineData" in p)
        # the SDK itself writes the Blob's `mime_type` in snake case; it arrives as sent
        assert (inline.get("mimeType") or inline.get("mime_type")) == "image/png"
        return base64.urlsafe_b64decode(inline["data"])
    message = body["messages"][-1]
    if kind == "ollama":
        return base64.b64decode(message["images"][0], validate=True)
    if kind == "anthropic":
        block = next(b for b in message["content"] if b["type"] == "image")
        assert block["source"]["media_type"] == "image/png"
        return base64.b64decode(block["source"]["data"], validate=True)
    part = next(p for p in message["content"] if p["type"] == "image_url")
    url = part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,"), url
    return base64.b64decode(url.split(",", 1)[1], validate=True)


@pytest.mark.parametrize("version", VERSIONS, ids=["v1", "v1beta"])
@pytest.mark.parametrize("kind", KINDS)
def test_generate_content_text_usage_and_config(door_upstream, kind, version):
    served = door_upstream(kind)
    client = sdk(served, version)
    served.reply(text="Hello from upstream")
    answer = client.models.generate_content(model=served.model, contents="hi")
    assert answer.text == "Hello from upstream", answer
    usage = answer.usage_metadata
    assert usage.prompt_token_count > 0 and usage.candidates_token_count > 0, usage
    assert usage.total_token_count >= usage.prompt_token_count + usage.candidates_token_count
    headers = answer.sdk_http_response.headers
    assert headers["x-relaygate-provider"] == kind
    assert headers["x-relaygate-model"] == MODELS[kind]
    call = served.fake.calls()[-1]
    assert CLIENT_KEY not in repr((call.headers, call.query, call.json))

    config = types.GenerateContentConfig(
        system_instruction=SYSTEM, temperature=0.25, max_output_tokens=77
    )
    answer = client.models.generate_content(model=served.model, contents="hi", config=config)
    assert answer.text == "Hello from upstream"
    assert sampling_sent(kind, last_body(served)) == (SYSTEM, 0.25, 77)


@pytest.mark.parametrize("kind", KINDS)
def test_inline_image(door_upstream, kind):
    served = door_upstream(kind)
    served.reply(text="a red dot")
    contents = [types.Part.from_bytes(data=PNG, mime_type="image/png"), "what is this?"]
    client = sdk(served, "v1beta")  # kept: a Client closes its connections when collected
    answer = client.models.generate_content(model=served.model, contents=contents)
    assert answer.text == "a red dot"
    assert image_sent(kind, last_body(served)) == PNG


@pytest.mark.parametrize("version", VERSIONS, ids=["v1", "v1beta"])
@pytest.mark.parametrize("kind", KINDS)
def test_stream_text_and_final_usage(door_upstream, kind, version):
    served = door_upstream(kind)
    served.reply(text="one two three four five")
    client = sdk(served, version)
    chunks = list(client.models.generate_content_stream(model=served.model, contents="count"))
    assert len(chunks) > 1, chunks
    assert "".join(c.text or "" for c in chunks) == "one two three four five"
    usage = chunks[-1].usage_metadata
    assert usage is not None and usage.prompt_token_count > 0, chunks[-1]
    assert usage.candidates_token_count > 0 and usage.total_token_count > 0
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert "x-request-id" in chunks[-1].sdk_http_response.headers
    if kind == "gemini":
        call = served.fake.calls()[-1]
        assert call.path.endswith(":streamGenerateContent") and call.query == {"alt": "sse"}


def check_second_turn(kind: str, body: dict[str, Any], call_id: str | None) -> None:
    """The upstream got the call and its result as its own format pairs them."""
    if kind == "gemini":
        parts = [p for c in body["contents"] for p in c["parts"]]
        assert {"name": "get_weather", "args": {"city": "Paris"}}.items() <= next(
            p["functionCall"] for p in parts if "functionCall" in p
        ).items()
        answer = next(p["functionResponse"] for p in parts if "functionResponse" in p)
        assert answer["name"] == "get_weather" and answer["response"] == {"temp_c": 21}
        return
    messages = body["messages"]
    if kind == "anthropic":
        use = next(b for b in messages[1]["content"] if b["type"] == "tool_use")
        result = next(b for b in messages[2]["content"] if b["type"] == "tool_result")
        assert use["input"] == {"city": "Paris"} and result["tool_use_id"] == use["id"]
        return
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"], messages
    assert messages[0]["content"] == "weather in Paris?"
    calls = messages[1]["tool_calls"]
    assert len(calls) == 1 and calls[0]["function"]["name"] == "get_weather"
    args = calls[0]["function"]["arguments"]  # ollama's native chat sends an object
    assert (orjson.loads(args) if isinstance(args, str) else args) == {"city": "Paris"}
    assert orjson.loads(messages[2]["content"]) == {"temp_c": 21}
    if kind != "ollama":  # ollama's native chat has no call ids
        assert calls[0]["id"] == call_id and messages[2]["tool_call_id"] == call_id


@pytest.mark.parametrize("kind", KINDS)
def test_function_calling_both_ways_and_second_turn(door_upstream, kind):
    served = door_upstream(kind)
    client = sdk(served, "v1beta")
    config = types.GenerateContentConfig(tools=[WEATHER])
    served.reply(tool_calls=[WEATHER_CALL])
    prompt = "weather in Paris?"
    answer = client.models.generate_content(model=served.model, contents=prompt, config=config)
    assert answer.function_calls[0].name == "get_weather", answer
    assert answer.function_calls[0].args == {"city": "Paris"}
    if kind != "gemini":
        tools = last_body(served)["tools"]
        assert "get_weather" in orjson.dumps(tools).decode()

    chunks = list(
        client.models.generate_content_stream(model=served.model, contents=prompt, config=config)
    )
    streamed = [fc for c in chunks for fc in c.function_calls or []]
    assert [(fc.name, fc.args) for fc in streamed] == [("get_weather", {"city": "Paris"})]

    # the second turn: the model's content as it came, then the function's result
    served.reply(text="It is 21 degrees.")
    turn = answer.candidates[0].content
    result = types.Part.from_function_response(name="get_weather", response={"temp_c": 21})
    contents = [
        types.Content(role="user", parts=[types.Part.from_text(text=prompt)]),
        turn,
        types.Content(role="user", parts=[result]),
    ]
    final = client.models.generate_content(model=served.model, contents=contents, config=config)
    assert final.text == "It is 21 degrees."
    check_second_turn(kind, last_body(served), answer.function_calls[0].id)


@pytest.mark.parametrize("version", VERSIONS, ids=["v1", "v1beta"])
@pytest.mark.parametrize("kind", ["groq", "gemini"])
def test_count_tokens_and_models_list(door_upstream, kind, version):
    served = door_upstream(kind)
    client = sdk(served, version)
    counted = client.models.count_tokens(model=served.model, contents="how many tokens is this?")
    assert counted.total_tokens > 0
    longer = client.models.count_tokens(model=served.model, contents="how many tokens? " * 50)
    assert longer.total_tokens > counted.total_tokens
    # estimated by the gateway, or counted exactly by a target that counts in Gemini's format
    assert all(c.path.endswith(":countTokens") for c in served.fake.calls())
    if kind == "gemini":  # exact: the upstream's own count of the client's body
        first = served.fake.calls()[0]
        assert first.key == served.key and first.path.endswith(f"{MODELS[kind]}:countTokens")
        assert counted.total_tokens == count_words(first.json) + 3
    else:
        assert not served.fake.calls()

    names = [m.name for m in client.models.list()]
    assert f"models/{served.model}" in names, names
    served.reply(text="listed and used")
    name = next(n for n in names if n == f"models/{served.model}")
    assert client.models.generate_content(model=name, contents="hi").text == "listed and used"
    call = served.fake.calls()[-1]
    if kind == "gemini":
        assert call.path == f"/v1beta/models/{MODELS[kind]}:generateContent"
    else:
        assert call.json["model"] == MODELS[kind]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("kind", KINDS)
def test_ledger_row_and_answer_headers(door_upstream, kind, stream):
    served = door_upstream(kind)
    served.reply(text="ledger me please", usage=(12, 3))
    client = sdk(served, "v1beta")
    if stream:
        chunks = list(client.models.generate_content_stream(model=served.model, contents="hi"))
        last = chunks[-1]
    else:
        last = client.models.generate_content(model=served.model, contents="hi")
    headers = last.sdk_http_response.headers
    rid = headers["x-request-id"]
    assert rid.startswith("req_")
    assert headers["x-relaygate-provider"] == kind and headers["x-relaygate-attempts"] == "1"
    assert headers["x-relaygate-key-id"].startswith(f"{kind}:")
    assert headers["x-relaygate-cache"] == "bypass"
    row = ledger_row(served.gw.db_path, rid)
    assert row["route"] == "/v1beta/models:generateContent"
    assert row["client_id"] == static_id(CLIENT_KEY) and row["client"] == "tests"
    assert (row["provider"], row["model"], row["status"]) == (kind, MODELS[kind], 200)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (12, 3), row
    assert row["stream"] == int(stream) and row["key_id"] == headers["x-relaygate-key-id"]
    assert last.usage_metadata.prompt_token_count == 12
    assert last.usage_metadata.candidates_token_count == 3
