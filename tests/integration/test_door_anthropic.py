"""The Anthropic Messages front door end to end (SPEC §7a, protocols.md §3, §12): the official
`anthropic` SDK (and, for Claude Code's exact request, httpx) against the real HTTP server, in
front of one fake upstream of every kind. What the upstream received is read from the fake's
record, so a mistranslation shows even when the answer looks right. Errors, limits, budgets and
the ledger are in test_door_anthropic_limits.py."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import pytest

from tests.conftest import CLIENT_KEY
from tests.integration._doors import KINDS, MODELS, WEATHER_CALL, Served

OPENAI_KINDS = ("openai", "groq")
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
# a 1x1 transparent PNG
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="


@pytest.fixture
def sdk() -> Iterator[Callable[[Served], anthropic.Anthropic]]:
    """Factory: `sdk(served)` -> an SDK client of the gateway with its client key, closed after."""
    made: list[anthropic.Anthropic] = []

    def make(served: Served) -> anthropic.Anthropic:
        made.append(
            anthropic.Anthropic(
                base_url=served.gw.base, api_key=served.gw.key, max_retries=0, timeout=10
            )
        )
        return made[-1]

    yield make
    for client in made:
        client.close()


def last_body(served: Served) -> dict[str, Any]:
    calls = served.fake.calls()
    assert calls, "the upstream was not called"
    return calls[-1].json


def system_of(kind: str, body: dict[str, Any]) -> Any:
    """The system prompt as the upstream received it."""
    if kind == "anthropic":
        return body.get("system")
    if kind == "gemini":
        return "".join(p["text"] for p in body["systemInstruction"]["parts"])
    first = body["messages"][0]
    assert first["role"] == "system", body
    return first["content"]


# --- messages.create -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_create_answers_a_message_with_usage(door_upstream, kind, sdk):
    served = door_upstream(kind)
    served.reply(text="Hello from upstream", usage=(11, 7))
    msg = sdk(served).messages.create(
        model=served.model, max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    )
    assert msg.type == "message" and msg.role == "assistant"
    (block,) = msg.content
    assert block.type == "text" and block.text == "Hello from upstream"
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (11, 7)
    assert msg.id.startswith("msg_") and len(msg.id) > 8
    assert msg.model == MODELS[kind]  # the model that answered
    assert len(served.fake.calls()) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_system_as_string_and_as_blocks_and_a_base64_image(door_upstream, kind, sdk):
    served = door_upstream(kind)
    client = sdk(served)
    served.reply(text="ok")
    hi = [{"role": "user", "content": "hi"}]
    client.messages.create(model=served.model, max_tokens=32, system="Be terse.", messages=hi)
    assert system_of(kind, last_body(served)) == "Be terse."

    blocks = [{"type": "text", "text": "Be terse."}, {"type": "text", "text": "Speak French."}]
    client.messages.create(model=served.model, max_tokens=32, system=blocks, messages=hi)
    expected = blocks if kind == "anthropic" else "Be terse.\n\nSpeak French."
    assert system_of(kind, last_body(served)) == expected

    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    msg = client.messages.create(
        model=served.model,
        max_tokens=32,
        messages=[{"role": "user", "content": [{"type": "text", "text": "What is it?"}, image]}],
    )
    assert msg.content[0].text == "ok"
    body = last_body(served)
    if kind == "anthropic":
        assert body["messages"][0]["content"][1] == image
    elif kind in OPENAI_KINDS:
        parts = body["messages"][-1]["content"]
        assert {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}} in parts
    elif kind == "gemini":
        parts = body["contents"][-1]["parts"]
        inline = [p.get("inlineData") or p.get("inline_data") for p in parts]
        assert any(i and i["data"] == PNG for i in inline), parts
    else:
        assert body["messages"][-1]["images"] == [PNG]


# --- messages.stream with a tool call, then the tool result --------------------------------------


def check_tool_round_trip(
    kind: str, body: dict[str, Any], sent: list[dict[str, Any]], call_id: str, result: str
) -> None:
    """The second turn as the upstream received it: the call, then its result, tied together."""
    if kind == "anthropic":  # passed through as sent
        assert body["messages"] == sent
    elif kind in OPENAI_KINDS:
        assistant, tool = body["messages"][1], body["messages"][2]
        assert assistant["role"] == "assistant"
        (call,) = assistant["tool_calls"]
        assert call["id"] == call_id and call["function"]["name"] == "get_weather"
        assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
        assert tool == {"role": "tool", "tool_call_id": call_id, "content": result}
    elif kind == "gemini":
        parts = [p for c in body["contents"] for p in c["parts"]]
        calls = [p["functionCall"] for p in parts if "functionCall" in p]
        answers = [p["functionResponse"] for p in parts if "functionResponse" in p]
        assert calls[0]["name"] == "get_weather" and calls[0]["args"] == {"city": "Paris"}
        assert answers[0]["name"] == "get_weather" and result in json.dumps(answers[0])
    else:
        assistant, tool = body["messages"][1], body["messages"][2]
        call = assistant["tool_calls"][0]["function"]
        assert call["name"] == "get_weather" and call["arguments"] == {"city": "Paris"}
        assert tool["role"] == "tool" and tool["content"] == result


@pytest.mark.parametrize("kind", KINDS)
def test_stream_assembles_a_tool_call_and_the_result_goes_back(door_upstream, kind, sdk):
    served = door_upstream(kind)
    client = sdk(served)
    served.reply(tool_calls=[WEATHER_CALL])
    question = {"role": "user", "content": "Weather in Paris?"}
    with client.messages.stream(
        model=served.model, max_tokens=64, messages=[question], tools=[WEATHER_TOOL]
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop", kinds
    assert "input_json" in kinds and "content_block_stop" in kinds, kinds
    assert final.stop_reason == "tool_use", final
    (use,) = [b for b in final.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.input == {"city": "Paris"}
    assert use.id and final.usage.output_tokens > 0 and final.model == MODELS[kind]

    served.reply(text="It is sunny.")
    call = {"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}
    answer = {"type": "tool_result", "tool_use_id": use.id, "content": "18 C and sunny"}
    sent = [
        question,
        {"role": "assistant", "content": [call]},
        {"role": "user", "content": [answer]},
    ]
    msg = client.messages.create(
        model=served.model, max_tokens=64, tools=[WEATHER_TOOL], messages=sent
    )
    assert msg.content[0].text == "It is sunny." and msg.stop_reason == "end_turn"
    check_tool_round_trip(kind, last_body(served), sent, use.id, "18 C and sunny")


# --- count_tokens ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_count_tokens_with_the_sdk_and_as_claude_code_calls_it(door_upstream, kind, sdk):
    served = door_upstream(kind)
    short = [{"role": "user", "content": "hi"}]
    counted = sdk(served).messages.count_tokens(
        model=served.model, system="Be terse.", messages=short, tools=[WEATHER_TOOL]
    )
    assert counted.input_tokens > 0
    long = [{"role": "user", "content": "many words " * 200}]
    answer = httpx.post(
        served.gw.base + "/v1/messages/count_tokens?beta=true",
        headers={"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"},
        json={"model": served.model, "messages": long},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    assert list(answer.json()) == ["input_tokens"]
    assert answer.json()["input_tokens"] > counted.input_tokens


def test_count_tokens_is_exact_from_an_anthropic_target(door_upstream, sdk):
    served = door_upstream("anthropic")
    counted = sdk(served).messages.count_tokens(
        model=served.model, messages=[{"role": "user", "content": "one two three"}]
    )
    (asked,) = served.fake.calls()
    assert asked.path == "/v1/messages/count_tokens" and asked.key == served.key
    assert asked.json["model"] == MODELS["anthropic"]
    assert counted.input_tokens == 4 + 7  # the fake's count: the words of every string, + 7


# --- Claude Code's request (protocols.md §12.3) ---------------------------------------------------

CC_TOOLS = "Task Bash Glob Grep LS ExitPlanMode Read Edit MultiEdit Write NotebookEdit WebFetch"
CC_TOOLS += " TodoWrite WebSearch BashOutput KillShell SlashCommand"
CC_BETA = "claude-code-20250219,oauth-2025-04-20,interleaved-thinking-2025-05-14"
CC_USER_ID = json.dumps({"device_id": "d" * 64, "account_uuid": "", "session_id": "5" * 36})
BILLING = "x-anthropic-billing-header: cc_version=2.1.185.a3f; cc_entrypoint=cli; cch=7c0e2;"


def claude_code_body(model: str) -> dict[str, Any]:
    ephemeral = {"type": "ephemeral"}
    tools = [
        {
            "name": name,
            "description": f"The {name} tool.",
            "input_schema": {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "type": "object",
                "properties": {"command": {"type": "string", "description": "What to run"}},
                "required": ["command"],
                "additionalProperties": False,
            },
        }
        for name in CC_TOOLS.split()
    ]
    return {
        "model": model,
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "text",
                        "text": "<system-reminder>\nAs you answer, use this "
                        "context: the project is relaygate.\n</system-reminder>",
                    },
                    {
                        "type": "text",
                        "text": "<system-reminder>Today is 2026-05-01.</system-reminder>",
                    },
                    {"type": "text", "text": "List the files here.", "cache_control": ephemeral},
                ],
            }
        ],
        "temperature": 1,
        "system": [
            {"type": "text", "text": BILLING},
            {
                "type": "text",
                "text": "You are Claude Code, Anthropic's official CLI for Claude.",
                "cache_control": ephemeral,
            },
            {
                "type": "text",
                "text": "You are an interactive CLI tool for software work.",
                "cache_control": {"type": "ephemeral", "ttl": "1h"},
            },
        ],
        "tools": tools,
        "metadata": {"user_id": CC_USER_ID},
        "thinking": {"type": "enabled", "budget_tokens": 31999},
        "max_tokens": 32000,
        "stream": True,
    }


def sse_events(text: str) -> list[tuple[str | None, dict[str, Any]]]:
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = None, None
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data = json.loads(line[5:])
        if data is not None:
            out.append((name, data))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_a_claude_code_request_works_and_reaches_the_upstream_as_it_should(door_upstream, kind):
    served = door_upstream(kind)
    served.reply(tool_calls=[{"name": "Bash", "arguments": '{"command": "ls -la"}'}])
    body = claude_code_body(served.model)
    answer = httpx.post(
        served.gw.base + "/v1/messages?beta=true",
        headers={
            "x-api-key": CLIENT_KEY,
            "anthropic-version": "2023-06-01",
            "anthropic-beta": CC_BETA,
            "user-agent": "claude-cli/2.1.185 (external, cli)",
            "x-app": "cli",
        },
        json=body,
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = sse_events(answer.text)
    assert all(name == data["type"] for name, data in events), events  # an event: line on each
    kinds = [data["type"] for _, data in events if data["type"] != "ping"]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"], kinds
    starts = [d["content_block"] for _, d in events if d["type"] == "content_block_start"]
    assert [b["name"] for b in starts if b["type"] == "tool_use"] == ["Bash"]
    fragments = [
        d["delta"]["partial_json"]
        for _, d in events
        if d["type"] == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
    ]
    assert json.loads("".join(fragments)) == {"command": "ls -la"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"

    (up,) = served.fake.calls()
    headers = {k.lower(): v for k, v in up.headers.items()}
    assert not any(CLIENT_KEY in v for v in headers.values()), "the client key went upstream"
    if kind == "anthropic":  # passed through: all but the model kept, as Anthropic needs it
        assert up.json == {**body, "model": MODELS["anthropic"]}
        assert headers["anthropic-beta"] == "claude-code-20250219,interleaved-thinking-2025-05-14"
        assert headers["anthropic-version"] == "2023-06-01"
        assert headers["x-api-key"] == served.key and up.key == served.key
        return
    sent = json.dumps(up.json)
    for gone in ("cache_control", "x-anthropic-billing-header", "cch=", "budget_tokens"):
        assert gone not in sent, gone
    assert "d" * 64 not in sent and "metadata" not in up.json and "thinking" not in up.json
    assert "anthropic-beta" not in headers and "anthropic-version" not in headers
    assert "You are Claude Code" in sent and "<system-reminder>Today is" in sent
    assert "List the files here." in sent
    for name in CC_TOOLS.split():
        assert f'"{name}"' in sent, name


# --- thinking blocks of other targets sent to Anthropic ------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_unsigned_thinking_of_an_earlier_turn_is_not_refused(door_upstream, kind, sdk):
    """A conversation held with a non-Anthropic target (whose reasoning the door rendered as
    `thinking` with an empty signature) continues on any target: Anthropic refuses a thinking
    block without a valid signature, so those are dropped on the way; signed and redacted
    thinking are Anthropic's own and are kept."""
    served = door_upstream(kind)
    served.reply(text="Madrid.")
    signed = {"type": "thinking", "thinking": "Earlier.", "signature": "EqQBCkYIBxgCKkB0"}
    redacted = {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"}
    messages = [
        {"role": "user", "content": "Capital of France?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Unsigned one.", "signature": ""},
                {"type": "thinking", "thinking": "Unsigned two."},
                {"type": "text", "text": "Paris."},
            ],
        },
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": [signed, redacted, {"type": "text", "text": "Rome."}]},
        {"role": "user", "content": "And of Portugal?"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "Unsigned three."}]},
        {"role": "user", "content": "And of Spain?"},
    ]
    msg = sdk(served).messages.create(model=served.model, max_tokens=64, messages=messages)
    assert msg.content[0].text == "Madrid."
    body = last_body(served)
    assert "Unsigned" not in json.dumps(body)
    if kind == "anthropic":  # a turn left empty goes (Anthropic joins adjacent user turns)
        paris = {"role": "assistant", "content": [{"type": "text", "text": "Paris."}]}
        assert body["messages"] == [*messages[:1], paris, *messages[2:5], messages[6]]
