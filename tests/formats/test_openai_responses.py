"""The OpenAI Responses door against the official `openai` SDK: the door's rendered answers,
streams and errors are served from a real local HTTP server and read with
`client.responses.create` / `client.responses.stream`; plus the door's own edges (name
flattening, unknown items, streams without chunks) that the fixtures do not show."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from openai import BadRequestError, OpenAI

from relaygate import chat_fields
from relaygate.errors import InvalidRequest
from relaygate.formats._responses_tools import flat_name
from relaygate.formats.openai_responses import OpenAIResponses
from tests.formats.test_contract import RID, load

FIXTURES = Path(__file__).parent / "fixtures" / "openai_responses"
_NAME = r"^[a-zA-Z0-9_-]{1,64}$"


@dataclass
class Canned:
    """What the local server answers next, and the bodies it was sent."""

    status: int = 200
    content_type: str = "application/json"
    body: bytes = b"{}"
    seen: list[dict[str, Any]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.server.canned.seen.append(orjson.loads(self.rfile.read(length)))
        canned = self.server.canned
        self.send_response(canned.status)
        self.send_header("content-type", canned.content_type)
        self.send_header("content-length", str(len(canned.body)))
        self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(canned.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    canned: Canned


@pytest.fixture
def served() -> Iterator[tuple[OpenAI, Canned]]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.canned = Canned()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    port = server.server_address[1]
    try:
        with OpenAI(
            api_key="rg-test", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0, timeout=5
        ) as client:
            yield client, server.canned
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def door(body: dict[str, Any]) -> OpenAIResponses:
    made = OpenAIResponses(body, request_id=RID)
    made.chat_body()
    return made


def sse(made: OpenAIResponses, chunks: list[dict[str, Any]]) -> bytes:
    stream = made.streamer()
    raw = b""
    for chunk in chunks:
        if set(chunk) == {"error"}:
            return raw + stream.fail(chunk["error"])
        raw += stream.feed(chunk)
    return raw + stream.end()


# -- the whole answer, read by the SDK


def test_sdk_reads_a_text_answer(served: tuple[OpenAI, Canned]) -> None:
    client, canned = served
    case = load(FIXTURES / "answer-text.json")
    canned.body = door(case["request"]["body"]).render(case["completion"])
    got = client.responses.create(model="gpt-4.1-mini", input="Weather in Paris?")
    assert got.output_text == "Paris is sunny."
    assert got.id == "resp_" + RID.removeprefix("req_")
    assert got.status == "completed"
    assert got.usage is not None and got.usage.total_tokens == 123
    assert canned.seen[0]["input"] == "Weather in Paris?"


def test_sdk_reads_function_custom_and_namespaced_calls(served: tuple[OpenAI, Canned]) -> None:
    client, canned = served
    case = load(FIXTURES / "answer-custom_call.json")
    canned.body = door(case["request"]["body"]).render(case["completion"])
    got = client.responses.create(model="gpt-5-codex", input="Add hello.txt")
    patch, event = got.output
    assert patch.type == "custom_tool_call"
    assert patch.name == "apply_patch" and patch.call_id == "call_patch"
    assert patch.input.startswith("*** Begin Patch\n*** Add File: hello.txt\n")
    assert event.type == "function_call"
    assert (event.namespace, event.name) == ("mcp__codex_apps__calendar", "create_event")
    assert orjson.loads(event.arguments) == {"title": "Review"}
    assert got.output_text == ""


def test_sdk_reads_text_and_calls(served: tuple[OpenAI, Canned]) -> None:
    client, canned = served
    case = load(FIXTURES / "answer-text_and_call.json")
    canned.body = door(case["request"]["body"]).render(case["completion"])
    got = client.responses.create(model="gpt-4.1-mini", input="Weather?")
    assert got.output_text == "Let me check."
    assert [item.type for item in got.output] == ["message", "function_call", "function_call"]
    assert [getattr(item, "call_id", None) for item in got.output[1:]] == ["call_a", "call_b"]


def test_sdk_reads_an_incomplete_answer(served: tuple[OpenAI, Canned]) -> None:
    client, canned = served
    case = load(FIXTURES / "answer-length.json")
    canned.body = door(case["request"]["body"]).render(case["completion"])
    got = client.responses.create(model="gpt-4.1-mini", input="Weather?")
    assert got.status == "incomplete"
    assert got.incomplete_details is not None
    assert got.incomplete_details.reason == "max_output_tokens"
    assert got.output_text == "Paris is"


def test_sdk_raises_the_stateless_400(served: tuple[OpenAI, Canned]) -> None:
    client, canned = served
    with pytest.raises(InvalidRequest) as caught:
        door({"model": "m", "input": "x", "previous_response_id": "resp_1"})
    canned.status, canned.body = 400, OpenAIResponses.error_body(caught.value, caught.value.message)
    with pytest.raises(BadRequestError) as raised:
        client.responses.create(model="m", input="x", previous_response_id="resp_1")
    assert raised.value.code == "previous_response_not_found"
    assert raised.value.param == "previous_response_id"


# -- streams, assembled by the SDK's stream helper


def _stream(client: OpenAI, canned: Canned, name: str, **kwargs: Any) -> tuple[list[str], Any]:
    case = load(FIXTURES / name)
    canned.content_type = "text/event-stream"
    canned.body = sse(door(case["request"]["body"]), case["chunks"])
    kinds: list[str] = []
    with client.responses.stream(model="m", input="x", **kwargs) as stream:
        for event in stream:
            kinds.append(event.type)
        final = stream.get_final_response() if kinds[-1] == "response.completed" else None
    return kinds, final


def test_sdk_assembles_a_text_stream(served: tuple[OpenAI, Canned]) -> None:
    kinds, final = _stream(*served, "stream-text.json")
    assert final.output_text == "Paris is sunny."
    assert kinds.count("response.output_text.delta") == 3
    assert final.usage.input_tokens_details.cached_tokens == 32


def test_sdk_assembles_a_function_call_stream(served: tuple[OpenAI, Canned]) -> None:
    weather = load(FIXTURES / "request-function_round_trip.json")["body"]["tools"]
    kinds, final = _stream(*served, "stream-function_call.json", tools=weather)
    (call,) = final.output
    assert call.type == "function_call" and call.call_id == "call_4XzlGBLtUe9dy3GVNV4jhq7h"
    assert call.parsed_arguments == {"city": "Paris"}  # strict tool: the SDK parses them
    assert kinds.count("response.function_call_arguments.delta") == 4


def test_sdk_assembles_custom_and_namespaced_calls(served: tuple[OpenAI, Canned]) -> None:
    kinds, final = _stream(*served, "stream-custom_call.json")
    patch, event = final.output
    assert patch.type == "custom_tool_call" and patch.name == "apply_patch"
    assert patch.input == "*** Begin Patch\n*** Add File: hello.txt\n+Hello\n*** End Patch\n"
    assert (event.namespace, event.name, event.arguments) == (
        "mcp__codex_apps__calendar",
        "create_event",
        '{"title":"Review"}',
    )
    assert "response.custom_tool_call_input.done" in kinds


def test_sdk_assembles_text_then_calls(served: tuple[OpenAI, Canned]) -> None:
    _, final = _stream(*served, "stream-text_then_call.json")
    assert final.output_text == "Let me check."
    calls = [(item.call_id, item.arguments) for item in final.output[1:]]
    assert calls == [("call_a", '{"city":"Paris"}'), ("call_b", '{"city":"Rome"}')]


def test_sdk_sees_a_failed_stream(served: tuple[OpenAI, Canned]) -> None:
    kinds, final = _stream(*served, "stream-failure.json")
    assert final is None
    assert kinds[0] == "response.created" and kinds[-1] == "response.failed"


def test_sdk_sees_an_incomplete_stream(served: tuple[OpenAI, Canned]) -> None:
    kinds, final = _stream(*served, "stream-length.json")
    assert final is None and kinds[-1] == "response.incomplete"


# -- the door's own edges


def test_codex_chat_body_passes_the_core_checks() -> None:
    chat = door(load(FIXTURES / "request-codex.json")["body"]).chat_body()
    chat_fields.check(chat)
    assert {tool["function"]["name"] for tool in chat["tools"]} == {
        "shell_command",
        "apply_patch",
        "mcp__codex_apps__calendar__create_event",
    }


def test_flat_names_are_valid_unique_and_map_back() -> None:
    long_ns = "mcp__" + "a_very_long_server_name" * 3 + "__"
    assert len(flat_name(long_ns, "tool")) == 64
    tools = [
        {"type": "function", "name": "ns__tool", "parameters": {"type": "object"}},
        {
            "type": "namespace",
            "name": "ns",
            "description": "",
            "tools": [
                {"type": "function", "name": "tool"},
                {"type": "custom", "name": "free form!"},
            ],
        },
        {
            "type": "namespace",
            "name": long_ns,
            "description": "d",
            "tools": [
                {"type": "function", "name": "tool"},
            ],
        },
    ]
    made = door({"model": "m", "input": "x", "tools": tools})
    names = [tool["function"]["name"] for tool in made.chat_body()["tools"]]
    assert len(set(names)) == 4
    assert all(re.match(_NAME, name) for name in names)
    assert names[0] == "ns__tool"  # the plain tool keeps its own name
    calls = [
        {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": "{}"}}
        for i, n in enumerate(names)
    ]
    completion = {
        "created": 1,
        "model": "m",
        "choices": [{"message": {"content": None, "tool_calls": calls}, "finish_reason": "stop"}],
    }
    output = orjson.loads(made.render(completion))["output"]
    assert [(item["type"], item.get("namespace"), item["name"]) for item in output] == [
        ("function_call", None, "ns__tool"),
        ("function_call", "ns", "tool"),
        ("custom_tool_call", "ns", "free form!"),
        ("function_call", long_ns, "tool"),
    ]


def test_unknown_items_are_skipped_and_tool_outputs_keep_their_text() -> None:
    chat = door(
        {
            "model": "m",
            "input": [
                {"type": "compaction", "encrypted_content": "x"},
                {"role": "user", "content": "hi"},
                {"type": "web_search_call", "id": "ws_1", "status": "completed"},
                {
                    "type": "function_call_output",
                    "call_id": "c",
                    "output": [
                        {"type": "input_text", "text": "a"},
                        {"type": "input_image", "image_url": "https://x/y.png", "detail": "auto"},
                        {"type": "input_text", "text": "b"},
                    ],
                },
            ],
        }
    ).chat_body()
    assert chat["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "tool", "tool_call_id": "c", "content": "a\nb"},
    ]


@pytest.mark.parametrize(
    ("choice", "want"),
    [
        ({"type": "allowed_tools", "mode": "required", "tools": []}, "required"),
        ({"type": "allowed_tools", "mode": "auto", "tools": []}, "auto"),
        ("none", "none"),
    ],
)
def test_tool_choice_forms(choice: Any, want: Any) -> None:
    tools = [{"type": "function", "name": "f"}]
    chat = door({"model": "m", "input": "x", "tools": tools, "tool_choice": choice}).chat_body()
    assert chat["tool_choice"] == want


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x", "tool_choice": {"type": "mcp", "server_label": "s"}}, "tool_choice"),
        (
            {"input": "x", "tools": [{"type": "web_search"}], "tool_choice": "required"},
            "tool_choice",
        ),
        ({"input": "x", "prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"input": "x", "stream": "yes"}, "stream"),
        ({"input": "x", "temperature": "hot"}, "temperature"),
        ({"input": "x", "text": {"format": {"type": "json_schema"}}}, "text.format.name"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"input": [{"type": "function_call", "name": "f"}]}, "input[0].call_id"),
        ({"input": [], "instructions": ""}, "input"),
        ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
    ],
)
def test_bad_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        OpenAIResponses({"model": "m", **body}, request_id=RID).chat_body()
    assert caught.value.param == param


def test_a_stream_without_chunks_still_completes() -> None:
    raw = OpenAIResponses({"model": "m", "input": "x"}, request_id=RID).streamer().end()
    kinds = [line.split(b": ", 1)[1] for line in raw.splitlines() if line.startswith(b"event:")]
    assert kinds == [b"response.created", b"response.in_progress", b"response.completed"]


def test_a_custom_call_that_is_not_json_keeps_its_raw_text() -> None:
    made = door(load(FIXTURES / "answer-custom_call.json")["request"]["body"])
    call = {"id": "c1", "type": "function", "function": {"name": "apply_patch", "arguments": "raw"}}
    completion = {
        "created": 1,
        "model": "m",
        "choices": [{"message": {"content": None, "tool_calls": [call]}, "finish_reason": "stop"}],
    }
    (item,) = orjson.loads(made.render(completion))["output"]
    assert item == {
        "id": "ctc_" + RID.removeprefix("req_") + "_0",
        "type": "custom_tool_call",
        "call_id": "c1",
        "name": "apply_patch",
        "input": "raw",
    }


def test_a_new_call_id_on_a_reused_index_is_a_new_call() -> None:
    made = door({"model": "m", "input": "x", "tools": [{"type": "function", "name": "f"}]})
    chunks = [
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": f"call_{i}",
                                "function": {"name": "f", "arguments": "{}"},
                            }
                        ]
                    },
                }
            ]
        }
        for i in (1, 2)
    ]
    raw = sse(made, chunks)
    done = [line for line in raw.splitlines() if line.startswith(b"data:")][-1]
    output = orjson.loads(done.removeprefix(b"data: "))["response"]["output"]
    assert [(item["call_id"], item["arguments"]) for item in output] == [
        ("call_1", "{}"),
        ("call_2", "{}"),
    ]
