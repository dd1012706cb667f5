"""The OpenAI Responses front door end to end (SPEC §7a, protocols.md §11), part one: the official
`openai` SDK and a raw Codex CLI turn against the real HTTP server, over every upstream kind, the
ledger rows and answer headers included. Part two (passthrough, refusals, errors, budgets):
test_door_responses_passthrough_errors.py."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from relaygate.auth.clients import static_id
from tests.integration._doors import KINDS, MODELS, WEATHER_CALL

PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5Er"
    "kJggg=="
)
DATA_URL = f"data:image/png;base64,{PNG}"
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER_TOOL = {"type": "function", "name": "get_weather", "parameters": CITY, "strict": False}
OPENAI_KINDS = ("openai", "groq")


_CLIENTS: list[openai.OpenAI] = []


def sdk(served: Any, key: str | None = None) -> openai.OpenAI:
    """An SDK client of the gateway (closed after the test by `close_sdk_clients`)."""
    client = openai.OpenAI(
        base_url=served.gw.v1, api_key=key or served.gw.key, max_retries=0, timeout=10
    )
    _CLIENTS.append(client)
    return client


@pytest.fixture(autouse=True)
def close_sdk_clients() -> Iterator[None]:
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()


def ledger_row(served: Any, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
    """The ledger row of one request, polled until the buffer is flushed (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.closing(sqlite3.connect(served.gw.db_path)) as db:
            db.row_factory = sqlite3.Row
            try:
                row = db.execute("SELECT * FROM ledger WHERE id = ?", (request_id,)).fetchone()
            except sqlite3.OperationalError:  # the table is not there yet
                row = None
        if row is not None:
            return dict(row)
        assert time.monotonic() < deadline, f"no ledger row for {request_id}"
        time.sleep(0.05)


def sse(lines: Any) -> list[tuple[str | None, dict[str, Any]]]:
    """An SSE body's events as (event name, JSON data)."""
    events: list[tuple[str | None, dict[str, Any]]] = []
    name: str | None = None
    data: list[str] = []
    for line in [*lines, ""]:
        if line == "":
            if data:
                events.append((name, json.loads("\n".join(data))))
            name, data = None, []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
    return events


def check_sequence(events: list[tuple[str | None, dict[str, Any]]]) -> None:
    """Every event named as its `type`, numbered from 0 by one, ending with one terminal event."""
    assert events, "no events"
    for n, (name, data) in enumerate(events):
        assert name == data["type"], (n, name, data)
        assert data["sequence_number"] == n, (n, data)
    assert events[0][0] == "response.created" and events[1][0] == "response.in_progress"
    ids = {d["response"]["id"] for _, d in events if "response" in d}
    assert len(ids) == 1 and ids.pop().startswith("resp_"), events


def check_headers(served: Any, headers: Any) -> str:
    rid = headers["x-request-id"]
    assert rid.startswith("req_")
    assert headers["x-relaygate-provider"] == served.kind
    assert headers["x-relaygate-model"] == MODELS[served.kind]
    assert headers["x-relaygate-attempts"] == "1"
    assert headers["x-relaygate-cache"] == "bypass"
    assert "x-relaygate-key-id" in headers
    return str(rid)


def check_row(served: Any, rid: str, *, stream: bool, usage: tuple[int, int]) -> None:
    row = ledger_row(served, rid)
    assert row["route"] == "/v1/responses", row
    assert row["client_id"] == static_id(served.gw.key), row
    assert (row["provider"], row["model"], row["status"]) == (served.kind, MODELS[served.kind], 200)
    assert (row["prompt_tokens"], row["completion_tokens"]) == usage, row
    assert bool(row["stream"]) is stream and row["error_code"] is None, row


def last_chat(served: Any) -> dict[str, Any]:
    return served.fake.calls()[-1].json


@pytest.mark.parametrize("kind", KINDS)
def test_create_text_instructions_and_item_input(door_upstream, kind):
    served = door_upstream(kind)
    client = sdk(served)
    served.reply(text="Paris is sunny.", usage=(12, 5))
    raw = client.responses.with_raw_response.create(model=served.model, input="Weather in Paris?")
    answer = raw.parse()
    assert answer.output_text == "Paris is sunny.", answer
    assert answer.status == "completed" and answer.object == "response"
    assert [item.type for item in answer.output] == ["message"]
    usage = answer.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (12, 5, 17)
    rid = check_headers(served, raw.headers)
    assert answer.id == "resp_" + rid.removeprefix("req_")
    check_row(served, rid, stream=False, usage=(12, 5))
    if kind in OPENAI_KINDS:
        sent = last_chat(served)
        assert sent["model"] == MODELS[kind]
        assert sent["messages"] == [{"role": "user", "content": "Weather in Paris?"}]

    served.reply(text="Terse.", usage=(20, 1))
    answer = client.responses.create(
        model=served.model, instructions="Answer in one word.", input="How is Paris?"
    )
    assert answer.output_text == "Terse." and answer.instructions == "Answer in one word."
    body = last_chat(served)
    assert "Answer in one word." in json.dumps(body)
    if kind in OPENAI_KINDS:
        assert body["messages"][0] == {"role": "system", "content": "Answer in one word."}

    served.reply(text="A red dot.")
    said = [{"type": "output_text", "text": "Hi!", "annotations": []}]
    asked = [
        {"type": "input_text", "text": "What is in this image?"},
        {"type": "input_image", "image_url": DATA_URL, "detail": "auto"},
    ]
    items = [
        {"role": "user", "content": "Hello"},
        {
            "type": "message",
            "role": "assistant",
            "id": "m1",
            "status": "completed",
            "content": said,
        },
        {"type": "message", "role": "user", "content": asked},
    ]
    answer = client.responses.create(model=served.model, input=items)
    assert answer.output_text == "A red dot." and answer.status == "completed"
    body = last_chat(served)
    assert PNG in json.dumps(body) and "What is in this image?" in json.dumps(body)
    if kind in OPENAI_KINDS:
        image = {"type": "image_url", "image_url": {"url": DATA_URL, "detail": "auto"}}
        assert body["messages"] == [
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi!"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "What is in this image?"}, image],
            },
        ]


@pytest.mark.parametrize("kind", KINDS)
def test_stream_function_call_then_its_output(door_upstream, kind):
    served = door_upstream(kind)
    client = sdk(served)
    served.reply(text="Let me look.", tool_calls=[WEATHER_CALL], usage=(30, 12))
    question = {"role": "user", "content": "Weather in Paris?"}
    with client.responses.with_streaming_response.create(
        model=served.model, input=[question], tools=[WEATHER_TOOL], stream=True
    ) as raw:
        rid = check_headers(served, raw.headers)
        events = sse(raw.iter_lines())
    check_sequence(events)
    assert events[-1][0] == "response.completed"
    kinds = [name for name, _ in events]
    assert "response.function_call_arguments.delta" in kinds, kinds
    assert "response.function_call_arguments.done" in kinds, kinds
    check_row(served, rid, stream=True, usage=(30, 12))

    with client.responses.stream(
        model=served.model, input=[question], tools=[WEATHER_TOOL]
    ) as stream:
        final = stream.get_final_response()
    assert final.status == "completed" and final.id.startswith("resp_")
    calls = [item for item in final.output if item.type == "function_call"]
    assert len(calls) == 1, final.output
    call = calls[0]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert call.call_id and call.status == "completed"
    assert final.usage is not None and final.usage.total_tokens == 42

    served.reply(text="It is sunny in Paris.")
    replay = [
        question,
        item("function_call", call_id=call.call_id, name=call.name, arguments=call.arguments),
        item("function_call_output", call_id=call.call_id, output="sunny, 24C"),
    ]
    with client.responses.stream(model=served.model, input=replay, tools=[WEATHER_TOOL]) as stream:
        final = stream.get_final_response()
    assert final.output_text == "It is sunny in Paris.", final
    body = last_chat(served)
    assert "sunny, 24C" in json.dumps(body) and "get_weather" in json.dumps(body)
    if kind in OPENAI_KINDS:
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
        function = {"name": "get_weather", "parameters": CITY, "strict": False}
        assert body["tools"] == [{"type": "function", "function": function}]
        called = {"name": "get_weather", "arguments": call.arguments}
        assert body["messages"][1:] == [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": call.call_id, "type": "function", "function": called}],
            },
            {"role": "tool", "tool_call_id": call.call_id, "content": "sunny, 24C"},
        ]


def item(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, **fields}


PATCH = "*** Begin Patch\n*** Add File: hello.txt\n+Hello, world!\n*** End Patch"
PATCH_A = "*** Begin Patch\n*** Add File: a.txt\n+a\n*** End Patch"
LARK = (
    'start: begin_patch hunk+ end_patch\nbegin_patch: "*** Begin Patch" LF\n'
    'end_patch: "*** End Patch" LF?\nhunk: add_hunk\nadd_hunk: "*** Add File: " filename LF '
    'add_line+\nfilename: /(.+)/\nadd_line: "+" /(.*)/ LF -> line\n%import common.LF'
)
ARGV = {"type": "array", "items": {"type": "string"}}
SHELL = {"type": "object", "properties": {"command": ARGV}, "required": ["command"]}
NUMBER = {"type": "object", "properties": {"number": {"type": "integer"}}}
GRAMMAR = {"type": "grammar", "syntax": "lark", "definition": LARK}
GITHUB = [item("function", name=n, parameters=NUMBER) for n in ("get_issue", "list_issues")]
CODEX_TOOLS = [
    item("function", name="shell", description="Runs a command.", parameters=SHELL, strict=False),
    item("custom", name="apply_patch", description="Edits files.", format=GRAMMAR),
    item("namespace", name="mcp__github", description="The GitHub MCP server.", tools=GITHUB),
    item("web_search", external_web_access=False),
]
FLAT = ("shell", "apply_patch", "mcp__github__get_issue", "mcp__github__list_issues")


def user(text: str, role: str = "user") -> dict[str, Any]:
    return item("message", role=role, content=[{"type": "input_text", "text": text}])


def codex_body(model: str) -> dict[str, Any]:
    """A turn as Codex CLI sends it (protocols.md §11.5), a whole conversation in `input`."""
    return {
        "model": model,
        "instructions": "You are Codex, a coding agent. " + "Follow the rules. " * 400,
        "input": [
            user("<permissions>workspace-write</permissions>", role="developer"),
            user("<environment_context><cwd>/repo</cwd></environment_context>"),
            user("List the files, then add a.txt and look at issue 7."),
            item("reasoning", id="rs_1", summary=[], encrypted_content="gAAAAABopaque-reasoning=="),
            item(
                "function_call", call_id="call_sh_1", name="shell", arguments='{"command":["ls"]}'
            ),
            item("function_call_output", call_id="call_sh_1", output="README.md"),
            item("custom_tool_call", call_id="call_patch_1", name="apply_patch", input=PATCH_A),
            item("custom_tool_call_output", call_id="call_patch_1", output="Done: a.txt"),
            item(
                "function_call",
                call_id="call_gh_1",
                name="get_issue",
                namespace="mcp__github",
                arguments='{"number":7}',
            ),
            item("function_call_output", call_id="call_gh_1", output="Issue 7: hello"),
            item("message", role="assistant", content=[{"type": "output_text", "text": "Added."}]),
            user("Now add hello.txt and list the open issues."),
        ],
        "tools": CODEX_TOOLS,
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "0199a1b2-c3d4-7e8f-9a0b-codexsession",
        "text": {"verbosity": "medium"},
    }


def upstream_tools(kind: str, body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The tools an upstream received: name -> parameter schema, whatever its wire format."""
    if kind == "anthropic":
        return {t["name"]: t["input_schema"] for t in body.get("tools", [])}
    if kind == "gemini":
        declared = [d for t in body.get("tools", []) for d in t.get("functionDeclarations", [])]
        return {d["name"]: d.get("parameters") or d.get("parametersJsonSchema") for d in declared}
    return {t["function"]["name"]: t["function"]["parameters"] for t in body.get("tools", [])}


def post_stream(served: Any, body: dict[str, Any]) -> tuple[httpx.Headers, list[Any]]:
    headers = {"Authorization": f"Bearer {served.gw.key}"}
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", served.gw.v1 + "/responses", json=body, headers=headers) as answer,
    ):
        assert answer.status_code == 200, answer.read()
        assert answer.headers["content-type"].startswith("text/event-stream")
        return answer.headers, sse(answer.iter_lines())


@pytest.mark.parametrize("kind", KINDS)
def test_a_codex_cli_turn(door_upstream, kind):
    served = door_upstream(kind)
    patch_call = {"name": "apply_patch", "arguments": json.dumps({"input": PATCH})}
    issue_call = {"name": "mcp__github__list_issues", "arguments": '{"number": 3}'}
    served.reply(text="Patching.", tool_calls=[patch_call, issue_call], usage=(900, 40))
    headers, events = post_stream(served, codex_body(served.model))
    check_sequence(events)
    assert [n for n, _ in events].count("response.completed") == 1
    assert events[-1][0] == "response.completed", events[-1]
    completed = events[-1][1]["response"]
    assert completed["status"] == "completed"
    assert completed["usage"]["input_tokens"] == 900 and completed["usage"]["output_tokens"] == 40
    assert completed["usage"]["total_tokens"] == 940
    done = [d["item"] for n, d in events if n == "response.output_item.done"]
    added = [d["item"] for n, d in events if n == "response.output_item.added"]
    assert len(added) == len(done) == len(completed["output"])
    assert [i["id"] for i in added] == [i["id"] for i in done]
    patch = [i for i in done if i["type"] == "custom_tool_call"]
    assert len(patch) == 1 and patch[0]["name"] == "apply_patch", done
    assert patch[0]["input"] == PATCH and patch[0]["call_id"]
    calls = [i for i in done if i["type"] == "function_call"]
    assert len(calls) == 1, done
    assert (calls[0]["name"], calls[0].get("namespace")) == ("list_issues", "mcp__github")
    assert json.loads(calls[0]["arguments"]) == {"number": 3}
    assert [i for i in completed["output"] if i["type"] != "message"] == [*patch, *calls]
    texts = [i for i in done if i["type"] == "message"]
    assert texts and texts[0]["content"][0]["text"] == "Patching."
    rid = check_headers(served, headers)
    check_row(served, rid, stream=True, usage=(900, 40))
    body = last_chat(served)

    # the SDK's stream helper assembles the same turn, and a whole answer carries the same items
    params = {k: v for k, v in codex_body(served.model).items() if k != "stream"}
    client = sdk(served)
    with client.responses.stream(**params) as stream:
        final = stream.get_final_response()
    assert final.output_text == "Patching."  # (the fake OpenAI's whole answer drops the text)
    for answer in (final, client.responses.create(**params)):
        assert answer.status == "completed", answer
        calls = [i for i in answer.output if i.type != "message"]
        assert [(i.type, i.name, i.namespace) for i in calls] == [
            ("custom_tool_call", "apply_patch", None),
            ("function_call", "list_issues", "mcp__github"),
        ], answer.output
        assert calls[0].input == PATCH and json.loads(calls[1].arguments) == {"number": 3}
    tools = upstream_tools(kind, body)
    assert sorted(tools) == sorted(FLAT), tools  # no hosted web_search
    assert tools["apply_patch"]["properties"]["input"]["type"] == "string", tools
    assert tools["apply_patch"]["required"] == ["input"], tools
    text = json.dumps(body)
    for forwarded in ("README.md", "Done: a.txt", "Issue 7: hello", "Added.", "hello.txt"):
        assert forwarded in text, forwarded
    assert "gAAAAABopaque" not in text and "reasoning.encrypted_content" not in text
    if kind in OPENAI_KINDS:
        messages = body["messages"]
        assert [m["role"] for m in messages] == [
            *("system", "system", "user", "user", "assistant", "tool", "assistant", "tool"),
            *("assistant", "tool", "assistant", "user"),
        ]
        patched = messages[6]["tool_calls"][0]
        assert patched["id"] == "call_patch_1" and patched["function"]["name"] == "apply_patch"
        assert json.loads(patched["function"]["arguments"]) == {"input": PATCH_A}
        assert messages[8]["tool_calls"][0]["function"]["name"] == "mcp__github__get_issue"
        assert messages[9] == {
            "role": "tool",
            "tool_call_id": "call_gh_1",
            "content": "Issue 7: hello",
        }
        assert body["parallel_tool_calls"] is True and body["tool_choice"] == "auto"
        for dropped in ("store", "include", "prompt_cache_key", "reasoning", "text", "input"):
            assert dropped not in body, dropped
