"""The Anthropic Messages door beyond the contract fixtures: the official `anthropic` SDK reading
what the door renders (served from a real loopback socket), count_tokens, error types by status
and inside a stream, and the stream's invariants under any fragmentation of tool arguments."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anthropic
import orjson
import pytest
from aiohttp import web

from relaygate.errors import InvalidRequest, RateLimitExceeded, UpstreamRejected
from relaygate.formats.anthropic_messages import (
    DOOR,
    AnthropicMessages,
    count_tokens_body,
    count_tokens_chat,
)
from tests.fakes._server import AiohttpServer
from tests.formats.test_contract import RID, events

MODEL = "claude-sonnet-4-20250514"
MSG_ID = "msg_" + RID.removeprefix("req_")
HI = [{"role": "user", "content": "Hi"}]
WEATHER = {
    "name": "get_weather",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@dataclass
class Canned:
    """What the local server answers next, and the bodies it received."""

    status: int = 200
    content_type: str = "application/json"
    body: bytes = b"{}"
    received: list[Any] = field(default_factory=list)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Canned, str]]:
    canned = Canned()

    async def messages(request: web.Request) -> web.Response:
        canned.received.append(await request.json())
        return web.Response(
            status=canned.status, body=canned.body, content_type=canned.content_type
        )

    def make_app() -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/messages", messages)
        return app

    server = AiohttpServer(make_app).start()
    yield canned, server.base
    server.stop()


@pytest.fixture
def client(served: tuple[Canned, str]) -> Iterator[anthropic.Anthropic]:
    sdk = anthropic.Anthropic(api_key="rg-test", base_url=served[1], max_retries=0, timeout=5.0)
    yield sdk
    sdk.close()


def serve(served: tuple[Canned, str], body: bytes, *, status: int = 200, sse: bool = False) -> None:
    canned = served[0]
    canned.status, canned.body = status, body
    canned.content_type = "text/event-stream" if sse else "application/json"


def door(body: dict[str, Any] | None = None, **kwargs: Any) -> AnthropicMessages:
    made = DOOR(
        body or {"model": MODEL, "max_tokens": 64, "messages": HI}, request_id=RID, **kwargs
    )
    assert isinstance(made, AnthropicMessages)
    return made


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-s",
        "object": "chat.completion.chunk",
        "created": 1765000000,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}],
        "usage": None,
    }


def usage_chunk(prompt: int, completion: int, cached: int | None = None) -> dict[str, Any]:
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion}
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return {
        "object": "chat.completion.chunk",
        "model": "gpt-4o-mini",
        "choices": [],
        "usage": usage,
    }


def call(index: int, args: str, call_id: str | None = None, name: str = "") -> dict[str, Any]:
    piece: dict[str, Any] = {"index": index, "function": {"arguments": args}}
    if call_id:
        piece.update(id=call_id, type="function")
        piece["function"]["name"] = name
    return {"tool_calls": [piece]}


def rendered(chunks: list[dict[str, Any]], error: dict[str, Any] | None = None) -> bytes:
    made = door({"model": MODEL, "max_tokens": 64, "messages": HI, "stream": True})
    made.chat_body()
    stream = made.streamer()
    out = b"".join(stream.feed(c) for c in chunks)
    return out + (stream.fail(error) if error is not None else stream.end())


TOOL_CHUNKS = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "I'll check "}),
    chunk({"content": "the weather."}),
    chunk(call(0, "", "call_Wx", "get_weather")),
    chunk(call(0, '{"loc')),
    chunk(call(0, 'ation": "Par')),
    chunk(call(0, 'is", "days": [1, ')),
    chunk(call(0, '2], "opts": {"u')),
    chunk(call(0, 'nit": "C"}}')),
    chunk(call(1, '{"zone": "CET"}', "call_Tm", "get_time")),
    chunk({}, "tool_calls"),
    usage_chunk(120, 40, 100),
]


# ------------------------------------------------------------------ the SDK over a real socket


def test_sdk_stream_assembles_text_and_tool_input(
    served: tuple[Canned, str], client: anthropic.Anthropic
) -> None:
    serve(served, rendered(TOOL_CHUNKS), sse=True)
    with client.messages.stream(model=MODEL, max_tokens=64, messages=HI) as stream:
        final = stream.get_final_message()
    assert served[0].received[-1]["stream"] is True
    assert final.id == MSG_ID
    assert [block.type for block in final.content] == ["text", "tool_use", "tool_use"]
    assert final.content[0].text == "I'll check the weather."
    wx, tm = final.content[1], final.content[2]
    assert (wx.id, wx.name) == ("call_Wx", "get_weather")
    assert wx.input == {"location": "Paris", "days": [1, 2], "opts": {"unit": "C"}}
    assert (tm.id, tm.input) == ("call_Tm", {"zone": "CET"})
    assert final.stop_reason == "tool_use"
    assert final.usage.input_tokens == 20
    assert final.usage.cache_read_input_tokens == 100
    assert final.usage.output_tokens == 40


def test_sdk_stream_assembles_thinking_then_text(
    served: tuple[Canned, str], client: anthropic.Anthropic
) -> None:
    chunks = [
        chunk({"role": "assistant", "reasoning_content": "Six"}),
        chunk({"reasoning_content": " times seven."}),
        chunk({"content": "42."}, "stop"),
        usage_chunk(9, 12),
    ]
    serve(served, rendered(chunks), sse=True)
    with client.messages.stream(model=MODEL, max_tokens=64, messages=HI) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert texts == ["42."]
    assert final.content[0].type == "thinking"
    assert final.content[0].thinking == "Six times seven."
    assert final.content[1].text == "42."
    assert (final.stop_reason, final.usage.input_tokens, final.usage.output_tokens) == (
        "end_turn",
        9,
        12,
    )


def test_sdk_reads_an_empty_stream(served: tuple[Canned, str], client: anthropic.Anthropic) -> None:
    serve(served, rendered([]), sse=True)
    with client.messages.stream(model=MODEL, max_tokens=64, messages=HI) as stream:
        final = stream.get_final_message()
    assert (final.content, final.stop_reason, final.model) == ([], "end_turn", MODEL)


def test_sdk_raises_on_a_failed_stream(
    served: tuple[Canned, str], client: anthropic.Anthropic
) -> None:
    error = {"message": "Took too long.", "type": "timeout_error", "code": None, "param": None}
    serve(served, rendered(TOOL_CHUNKS[:3], error), sse=True)
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        client.messages.stream(model=MODEL, max_tokens=64, messages=HI) as stream,
    ):
        stream.get_final_message()
    assert caught.value.type == "timeout_error"
    assert caught.value.api_message == "Took too long."


def test_sdk_parses_a_whole_answer(served: tuple[Canned, str], client: anthropic.Anthropic) -> None:
    completion = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1765000000,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                        }
                    ],
                },
            }
        ],
        "usage": {
            "prompt_tokens": 50,
            "completion_tokens": 9,
            "prompt_tokens_details": {"cached_tokens": 32},
        },
    }
    serve(served, door().render(completion))
    message = client.messages.create(model=MODEL, max_tokens=64, messages=HI)
    assert message.id == MSG_ID and message.model == "gpt-4o-mini"
    assert message.content[0].text == "Checking."
    assert message.content[1].input == {"city": "Oslo"}
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (18, 32)


@pytest.mark.parametrize(
    ("error", "raised", "kind"),
    [
        (RateLimitExceeded("Slow down."), anthropic.RateLimitError, "rate_limit_error"),
        (
            InvalidRequest("Bad field.", param="x"),
            anthropic.BadRequestError,
            "invalid_request_error",
        ),
    ],
)
def test_sdk_raises_error_bodies_by_status(
    served: tuple[Canned, str],
    client: anthropic.Anthropic,
    error: Any,
    raised: type[anthropic.APIStatusError],
    kind: str,
) -> None:
    serve(served, AnthropicMessages.error_body(error, error.message), status=error.status)
    with pytest.raises(raised) as caught:
        client.messages.create(model=MODEL, max_tokens=64, messages=HI)
    assert caught.value.status_code == error.status
    assert caught.value.type == kind
    assert caught.value.api_message == error.message


# ------------------------------------------------------------------ the door's own pieces


def test_door_identity() -> None:
    assert DOOR is AnthropicMessages
    assert (DOOR.name, DOOR.route) == ("anthropic_messages", "/v1/messages")


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (402, "billing_error"),
        (408, "invalid_request_error"),
        (422, "invalid_request_error"),
        (500, "api_error"),
        (501, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
    ],
)
def test_error_type_by_status(status: int, kind: str) -> None:
    error = UpstreamRejected(status, "no", type_=None, code=None)
    body = orjson.loads(AnthropicMessages.error_body(error, "redacted"))
    assert body == {"type": "error", "error": {"type": kind, "message": "redacted"}}


@pytest.mark.parametrize(
    ("given", "kind"),
    [
        ("rate_limit_error", "rate_limit_error"),
        ("insufficient_quota", "rate_limit_error"),
        ("invalid_request_error", "invalid_request_error"),
        ("service_unavailable", "overloaded_error"),
        ("server_error", "api_error"),
        (None, "api_error"),
    ],
)
def test_stream_error_types(given: str | None, kind: str) -> None:
    out = events(rendered([chunk({"content": "x"})], {"message": "m", "type": given}))
    assert out[-1] == {
        "event": "error",
        "data": {"type": "error", "error": {"type": kind, "message": "m"}},
    }
    assert [e["event"] for e in out].count("message_stop") == 0


def test_count_tokens() -> None:
    assert orjson.loads(count_tokens_body(123)) == {"input_tokens": 123}
    chat = count_tokens_chat(
        {
            "model": MODEL,
            "system": [
                {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}
            ],
            "messages": HI,
            "tools": [WEATHER],
            "tool_choice": {"type": "any"},
            "thinking": {"type": "enabled", "budget_tokens": 1024},
        }
    )
    assert chat["messages"] == [{"role": "system", "content": "Be brief."}, *HI]
    assert chat["tools"][0]["function"]["name"] == "get_weather"
    assert "max_tokens" not in chat and "stream" not in chat
    for wrong, param in [
        ({"model": MODEL, "messages": "Hi"}, "messages"),
        ({"model": MODEL, "messages": HI, "tools": {}}, "tools"),
        (
            {"model": MODEL, "messages": HI, "tools": [WEATHER], "tool_choice": {"type": "x"}},
            "tool_choice",
        ),
        ({"model": 7, "messages": HI}, "model"),
    ]:
        with pytest.raises(InvalidRequest) as caught:
            count_tokens_chat(wrong)
        assert caught.value.param == param


def test_chat_body_leaves_the_client_body_alone() -> None:
    body = {
        "model": MODEL,
        "max_tokens": 64,
        "system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "a", "cache_control": {}}]},
        ],
        "tools": [WEATHER],
        "stream": True,
    }
    before = json.dumps(body, sort_keys=True)
    door(body).chat_body()
    assert json.dumps(body, sort_keys=True) == before


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 7, 11])
def test_stream_fragments_pass_through_whole(cut: int) -> None:
    """However the arguments are cut, the deltas join to them, blocks open in order 0, 1, 2 and
    each closes once before message_delta."""
    args = '{"path": "/tmp/ä b.txt", "lines": [1, 2, 3], "flag": true, "n": null}'
    pieces = [args[i : i + cut] for i in range(0, len(args), cut)]
    chunks = [chunk({"content": "Reading."})]
    chunks += [
        chunk(call(0, p, "call_R" if i == 0 else None, "Read")) for i, p in enumerate(pieces)
    ]
    chunks += [chunk({"content": "Then more."}), chunk({}, "tool_calls"), usage_chunk(1, 2)]
    out = events(rendered(chunks))
    names = [e["event"] for e in out]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    starts = [e["data"]["index"] for e in out if e["event"] == "content_block_start"]
    stops = [e["data"]["index"] for e in out if e["event"] == "content_block_stop"]
    assert starts == stops == [0, 1, 2]
    joined = "".join(
        e["data"]["delta"]["partial_json"]
        for e in out
        if e["event"] == "content_block_delta" and e["data"]["index"] == 1
    )
    assert json.loads(joined) == json.loads(args)
    assert out[-2]["data"]["delta"]["stop_reason"] == "tool_use"


def test_every_event_has_its_event_line() -> None:
    raw = rendered(TOOL_CHUNKS)
    for block in raw.split(b"\n\n"):
        if block:
            head, data = block.split(b"\n")
            assert head.startswith(b"event: ") and data.startswith(b"data: ")
            assert (
                orjson.loads(data.removeprefix(b"data: "))["type"]
                == head.removeprefix(b"event: ").decode()
            )


def test_interleaved_tool_calls_keep_their_blocks() -> None:
    """An upstream that goes back to an earlier call: its fragments go to that call's block."""
    chunks = [
        chunk(call(0, '{"a":', "call_0", "f")),
        chunk(call(1, '{"b":', "call_1", "g")),
        chunk(call(0, " 1}")),
        chunk(call(1, " 2}")),
        chunk({}, "tool_calls"),
    ]
    deltas: dict[int, str] = {}
    for e in events(rendered(chunks)):
        if e["event"] == "content_block_delta":
            index = e["data"]["index"]
            deltas[index] = deltas.get(index, "") + e["data"]["delta"]["partial_json"]
    assert {i: json.loads(text) for i, text in deltas.items()} == {0: {"a": 1}, 1: {"b": 2}}
