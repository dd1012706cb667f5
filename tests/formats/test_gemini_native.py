"""The Gemini native door beyond the contract suite: its route helpers (paths, countTokens, the
model list), and its answers, streams and errors read back by the real google-genai SDK from a
local HTTP server, at both API versions the SDK speaks (v1 by default, v1beta when set). What the
SDK sends on the way in is recorded and must translate too."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest

from relaygate.errors import InvalidRequest, RateLimitExceeded, UpstreamError
from relaygate.formats.gemini_native import (
    DOOR,
    GeminiNative,
    count_tokens_body,
    count_tokens_chat,
    models_body,
    parse_path,
)

RID = "req_0192f3c4d5e6a7b8c9d0e1f2a3b4c5d6"
MODEL = "groq/llama-3.3-70b"
KEY = "rg-test-client-key-for-genai"


# --- route helpers ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "want"),
    [
        (
            "/v1beta/models/gemini-2.5-flash:generateContent",
            ("v1beta", "gemini-2.5-flash", "generateContent"),
        ),
        (
            "/v1/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            ("v1", "gemini-2.5-flash", "streamGenerateContent"),
        ),
        (
            "/v1beta/models/groq/llama-3.3-70b:countTokens",
            ("v1beta", "groq/llama-3.3-70b", "countTokens"),
        ),
        (
            "/v1/models/groq:gemma2-9b-it:generateContent",
            ("v1", "groq:gemma2-9b-it", "generateContent"),
        ),
        (
            "/v1/models/openrouter%2Fopenai%2Fgpt-4o-mini:generateContent",
            ("v1", "openrouter/openai/gpt-4o-mini", "generateContent"),
        ),
        (
            "/v1beta/models/my%20model%3Av2%3AgenerateContent",
            ("v1beta", "my model:v2", "generateContent"),
        ),
        ("/v1/models/groq:gemma2-9b-it", None),  # models.get, not a method
        ("/v1/models/gemini-2.5-flash", None),
        ("/v1/models/:generateContent", None),
        ("/v1/models", None),
        ("/v2/models/x:generateContent", None),
        ("/v1beta/tunedModels/x:generateContent", None),
        ("/v1/chat/completions", None),
    ],
)
def test_parse_path(path: str, want: tuple[str, str, str] | None) -> None:
    assert parse_path(path) == want


def test_door_identity() -> None:
    assert DOOR is GeminiNative
    assert GeminiNative.name == "gemini_native"
    assert GeminiNative.route == "/v1beta/models:generateContent"


def test_count_tokens_chat_both_forms() -> None:
    contents = [{"role": "user", "parts": [{"text": "How many tokens?"}]}]
    want = {"model": MODEL, "messages": [{"role": "user", "content": "How many tokens?"}]}
    assert count_tokens_chat({"contents": contents}, f"models/{MODEL}") == want
    rest = {
        "generateContentRequest": {
            "model": "models/ignored",
            "contents": contents,
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "generationConfig": {"maxOutputTokens": 5},
        }
    }
    assert count_tokens_chat(rest, MODEL) == {
        "model": MODEL,
        "messages": [{"role": "system", "content": "Be brief."}, *want["messages"]],
        "max_tokens": 5,
    }
    with pytest.raises(InvalidRequest) as caught:
        count_tokens_chat({"generateContentRequest": []}, MODEL)
    assert caught.value.param == "generateContentRequest"
    with pytest.raises(InvalidRequest) as caught:
        count_tokens_chat({}, MODEL)
    assert caught.value.param == "contents"


def test_count_tokens_body() -> None:
    assert orjson.loads(count_tokens_body(17)) == {"totalTokens": 17}


def test_models_body() -> None:
    got = orjson.loads(models_body(["gemini-2.5-flash", MODEL], limits={MODEL: (131072, 32768)}))
    methods = ["generateContent", "countTokens"]
    assert got == {
        "models": [
            {
                "name": "models/gemini-2.5-flash",
                "displayName": "gemini-2.5-flash",
                "supportedGenerationMethods": methods,
            },
            {
                "name": f"models/{MODEL}",
                "displayName": MODEL,
                "inputTokenLimit": 131072,
                "outputTokenLimit": 32768,
                "supportedGenerationMethods": methods,
            },
        ]
    }


def test_model_must_be_a_string() -> None:
    door = GeminiNative({"contents": [{"parts": [{"text": "x"}]}]}, request_id=RID, model=None)
    assert "model" not in door.chat_body()
    door = GeminiNative({"model": 5, "contents": [{"parts": [{"text": "x"}]}]}, request_id=RID)
    with pytest.raises(InvalidRequest) as caught:
        door.chat_body()
    assert caught.value.param == "model"


def test_hostile_nesting_is_a_400_not_a_crash() -> None:
    deep: Any = {}
    for _ in range(300):  # readable JSON, but deeper than can be written back
        deep = {"a": deep}
    call = {"role": "model", "parts": [{"functionCall": {"name": "f", "args": deep}}]}
    door = GeminiNative({"contents": [call]}, request_id=RID, model=MODEL)
    with pytest.raises(InvalidRequest) as caught:
        door.chat_body()
    assert caught.value.param == "contents[0].parts[0].functionCall.args"
    schema: Any = {"type": "STRING"}
    for _ in range(500):
        schema = {"type": "ARRAY", "items": schema}
    tools = [{"functionDeclarations": [{"name": "f", "parameters": schema}]}]
    door = GeminiNative({"contents": [{"parts": [{"text": "x"}]}], "tools": tools}, request_id=RID)
    with pytest.raises(InvalidRequest) as caught:
        door.chat_body()
    assert "nested too deeply" in caught.value.message


def test_upstream_arguments_too_deep_come_back_as_text() -> None:
    raw = "[" * 300 + "]" * 300
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": raw}}
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    answer = orjson.loads(
        _door({"contents": [{"parts": [{"text": "x"}]}]}).render(
            _completion(message, "tool_calls", usage)
        )
    )
    part = answer["candidates"][0]["content"]["parts"][0]
    assert part == {"functionCall": {"name": "f", "args": {"arguments": raw}, "id": "c"}}


# --- the real SDK against a local server ------------------------------------------------------
@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Server:
    """A thread HTTP server on 127.0.0.1: `routes[(method, path)]` holds the answers (status,
    content type, body) given in turn, the last one again and again; every request is
    recorded."""

    base: str = ""
    routes: dict[tuple[str, str], list[tuple[int, str, bytes]]] = field(default_factory=dict)
    seen: list[Recorded] = field(default_factory=list)

    def serve(
        self, method: str, path: str, *bodies: bytes, status: int = 200, sse: bool = False
    ) -> None:
        kind = "text/event-stream" if sse else "application/json"
        self.routes[(method, path)] = [(status, kind, body) for body in bodies]

    def answer(self, method: str, path: str) -> tuple[int, str, bytes]:
        queue = self.routes.get((method, path))
        if not queue:
            return 404, "application/json", b'{"error": {"code": 404, "message": "no route"}}'
        return queue.pop(0) if len(queue) > 1 else queue[0]


def _handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            path = self.path.partition("?")[0]
            server.seen.append(
                Recorded(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    orjson.loads(raw) if raw else None,
                )
            )
            status, kind, body = server.answer(self.command, path)
            self.send_response(status)
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = _answer
        do_POST = _answer

    return Handler


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    state = Server()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.timeout = 5
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def clients(server: Server) -> Iterator[dict[str, Any]]:
    """One SDK client per API version: the default (v1) and v1beta set explicitly."""
    from google import genai  # pinned in the dev extras: never skipped

    made = {}
    for version in ("v1", "v1beta"):
        options: dict[str, Any] = {"base_url": server.base, "timeout": 5000}
        if version != "v1":
            options["api_version"] = version
        made[version] = genai.Client(api_key=KEY, http_options=options)
    yield made
    for sdk in made.values():
        sdk.close()


@pytest.fixture(params=["v1", "v1beta"], ids=["default-v1", "v1beta"])
def client(
    request: pytest.FixtureRequest, server: Server, clients: dict[str, Any]
) -> tuple[Any, str]:
    server.routes.clear()
    server.seen.clear()
    return clients[request.param], request.param


def _door(body: dict[str, Any], *, stream: bool = False) -> GeminiNative:
    door = GeminiNative(body, request_id=RID, model=MODEL, stream=stream)
    door.chat_body()
    return door


def _completion(message: dict[str, Any], finish: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1765000000,
        "model": "llama-3.3-70b-versatile",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": usage,
    }


def _chunk(delta: dict[str, Any] | None = None, finish: str | None = None) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {
        "object": "chat.completion.chunk",
        "model": "llama-3.3-70b-versatile",
        "choices": choices,
    }


def test_sdk_generate_content_text(client: tuple[Any, str], server: Server) -> None:
    from google.genai import types

    sdk, version = client
    body = {"contents": [{"parts": [{"text": "Hello"}]}]}
    completion = _completion(
        {"role": "assistant", "content": "Hello there!", "reasoning_content": "Greet back."},
        "stop",
        {
            "prompt_tokens": 10,
            "completion_tokens": 9,
            "total_tokens": 19,
            "completion_tokens_details": {"reasoning_tokens": 4},
            "prompt_tokens_details": {"cached_tokens": 8},
        },
    )
    server.serve(
        "POST", f"/{version}/models/{MODEL}:generateContent", _door(body).render(completion)
    )
    answer = sdk.models.generate_content(
        model=MODEL,
        contents="Hello",
        config=types.GenerateContentConfig(
            system_instruction="Be nice.",
            temperature=0.2,
            max_output_tokens=50,
            stop_sequences=["X"],
        ),
    )
    assert answer.text == "Hello there!"
    assert answer.candidates[0].finish_reason == types.FinishReason.STOP
    assert answer.candidates[0].content.parts[0].thought is True
    usage = answer.usage_metadata
    assert (usage.prompt_token_count, usage.candidates_token_count) == (10, 5)
    assert (usage.thoughts_token_count, usage.total_token_count) == (4, 19)
    assert usage.cached_content_token_count == 8
    assert answer.model_version == "llama-3.3-70b-versatile"
    assert answer.response_id == "resp_" + RID.removeprefix("req_")
    # what the SDK sent: the path, the key, and a body the door translates
    sent = server.seen[-1]
    assert parse_path(sent.path) == (version, MODEL, "generateContent")
    assert sent.headers["x-goog-api-key"] == KEY
    chat = GeminiNative(sent.body, request_id=RID, model=MODEL).chat_body()
    assert chat == {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Be nice."},
            {"role": "user", "content": "Hello"},
        ],
        "temperature": 0.2,
        "max_tokens": 50,
        "stop": ["X"],
    }


def get_weather(city: str, days: int = 1) -> str:
    """The weather for a city.

    Args:
        city: The city.
        days: How many days ahead.
    """
    return "sunny"


def test_sdk_function_calls_round_trip(client: tuple[Any, str], server: Server) -> None:
    from google.genai import types

    sdk, version = client
    calls = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {
            "id": "call_2",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Rome","days":2}'},
        },
    ]
    completion = _completion(
        {"role": "assistant", "content": None, "tool_calls": calls},
        "tool_calls",
        {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52},
    )
    body = {"contents": [{"parts": [{"text": "Weather?"}]}]}
    server.serve(
        "POST", f"/{version}/models/{MODEL}:generateContent", _door(body).render(completion)
    )
    config = types.GenerateContentConfig(
        tools=[get_weather],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        tool_config=types.ToolConfig(
            function_calling_config=types.FunctionCallingConfig(
                mode=types.FunctionCallingConfigMode.ANY
            )
        ),
    )
    answer = sdk.models.generate_content(model=MODEL, contents="Weather?", config=config)
    got = [(c.id, c.name, c.args) for c in answer.function_calls]
    assert got == [
        ("call_1", "get_weather", {"city": "Paris"}),
        ("call_2", "get_weather", {"city": "Rome", "days": 2}),
    ]
    assert answer.text is None
    chat = GeminiNative(server.seen[-1].body, request_id=RID, model=MODEL).chat_body()
    assert chat["tool_choice"] == "required"
    (tool,) = chat["tools"]
    assert tool["function"]["name"] == "get_weather"
    params = tool["function"]["parameters"]
    assert params["type"] == "object"
    assert params["properties"]["city"]["type"] == "string"
    assert params["properties"]["days"]["type"] == "integer"
    # the history goes back with the model's calls and the function responses
    history = [
        types.Content(role="user", parts=[types.Part.from_text(text="Weather?")]),
        answer.candidates[0].content,
        types.Content(
            role="user",
            parts=[
                types.Part.from_function_response(name="get_weather", response={"result": "sunny"}),
                types.Part.from_function_response(name="get_weather", response={"result": "rain"}),
            ],
        ),
    ]
    server.serve(
        "POST",
        f"/{version}/models/{MODEL}:generateContent",
        _door(body).render(
            _completion(
                {"role": "assistant", "content": "Sunny, then rain."},
                "stop",
                {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            )
        ),
    )
    again = sdk.models.generate_content(model=MODEL, contents=history, config=config)
    assert again.text == "Sunny, then rain."
    chat = GeminiNative(server.seen[-1].body, request_id=RID, model=MODEL).chat_body()
    assert chat["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Rome","days":2}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"result":"sunny"}'},
        {"role": "tool", "tool_call_id": "call_2", "content": '{"result":"rain"}'},
    ]


def _stream_bytes(chunks: list[dict[str, Any]]) -> bytes:
    streamer = _door({"contents": [{"parts": [{"text": "x"}]}]}, stream=True).streamer()
    return b"".join(streamer.feed(c) for c in chunks) + streamer.end()


def test_sdk_stream_text_then_call(client: tuple[Any, str], server: Server) -> None:
    sdk, version = client
    chunks = [
        _chunk({"role": "assistant", "content": "Let me "}),
        _chunk({"content": "check."}),
        _chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_1",
                        "function": {"name": "get_weather", "arguments": '{"ci'},
                    }
                ]
            }
        ),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]}),
        _chunk({}, "tool_calls"),
        {**_chunk(), "usage": {"prompt_tokens": 30, "completion_tokens": 20, "total_tokens": 50}},
    ]
    path = f"/{version}/models/{MODEL}:streamGenerateContent"
    server.serve("POST", path, _stream_bytes(chunks), sse=True)
    got = list(sdk.models.generate_content_stream(model=MODEL, contents="Weather?"))
    assert server.seen[-1].path == f"{path}?alt=sse"
    assert "".join(c.text or "" for c in got) == "Let me check."
    calls = [call for c in got for call in c.function_calls or []]
    assert [(c.id, c.name, c.args) for c in calls] == [("call_1", "get_weather", {"city": "Paris"})]
    final = got[-1]
    assert final.candidates[0].finish_reason == "STOP"
    usage = final.usage_metadata
    assert (usage.prompt_token_count, usage.candidates_token_count, usage.total_token_count) == (
        30,
        20,
        50,
    )
    chat = GeminiNative(server.seen[-1].body, request_id=RID, model=MODEL, stream=True).chat_body()
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}


def test_sdk_stream_failure_raises(client: tuple[Any, str], server: Server) -> None:
    from google.genai import errors

    sdk, version = client
    streamer = _door({"contents": [{"parts": [{"text": "x"}]}]}, stream=True).streamer()
    raw = streamer.feed(_chunk({"role": "assistant", "content": "Hel"}))
    raw += streamer.fail(
        UpstreamError("The upstream connection was lost mid-stream.").to_dict()["error"]
    )
    server.serve("POST", f"/{version}/models/{MODEL}:streamGenerateContent", raw, sse=True)
    texts = []
    with pytest.raises(errors.APIError) as caught:
        for chunk in sdk.models.generate_content_stream(model=MODEL, contents="Hi"):
            texts.append(chunk.text)
    assert texts == ["Hel"]
    assert caught.value.code == 502
    assert caught.value.status == "UNAVAILABLE"
    assert caught.value.message == "The upstream connection was lost mid-stream."


def test_sdk_count_tokens(client: tuple[Any, str], server: Server) -> None:
    sdk, version = client
    server.serve("POST", f"/{version}/models/{MODEL}:countTokens", count_tokens_body(42))
    assert sdk.models.count_tokens(model=MODEL, contents="How many?").total_tokens == 42
    sent = server.seen[-1]
    assert parse_path(sent.path) == (version, MODEL, "countTokens")
    assert count_tokens_chat(sent.body, MODEL)["messages"] == [
        {"role": "user", "content": "How many?"}
    ]


def test_sdk_models_list_names_round_trip(client: tuple[Any, str], server: Server) -> None:
    sdk, version = client
    ids = ["gemini-2.5-flash", MODEL, "openrouter/openai/gpt-4o-mini", "groq:gemma2-9b-it"]
    server.serve("GET", f"/{version}/models", models_body(ids, limits={MODEL: (131072, 32768)}))
    models = list(sdk.models.list())
    assert [m.name for m in models] == [f"models/{i}" for i in ids]
    assert [m.display_name for m in models] == ids
    assert models[1].input_token_limit == 131072
    assert models[1].output_token_limit == 32768
    assert set(models[0].supported_actions or []) >= {"generateContent", "countTokens"}
    # each listed name, handed back to the SDK, reaches a path that names the same model
    for model, wanted in zip(models, ids, strict=True):
        server.serve("POST", f"/{version}/models/{wanted}:countTokens", count_tokens_body(1))
        assert sdk.models.count_tokens(model=model.name, contents="x").total_tokens == 1
        assert parse_path(server.seen[-1].path) == (version, wanted, "countTokens")


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (RateLimitExceeded("Rate limit reached.", retry_after_s=3), "RESOURCE_EXHAUSTED"),
        (
            InvalidRequest("'contents' must be a non-empty array.", param="contents"),
            "INVALID_ARGUMENT",
        ),
    ],
)
def test_sdk_error_bodies_raise_client_error(
    client: tuple[Any, str], server: Server, error: InvalidRequest, status: str
) -> None:
    from google.genai import errors

    sdk, version = client
    body = GeminiNative.error_body(error, error.message)
    server.serve("POST", f"/{version}/models/{MODEL}:generateContent", body, status=error.status)
    with pytest.raises(errors.ClientError) as caught:
        sdk.models.generate_content(model=MODEL, contents="Hi")
    assert caught.value.code == error.status
    assert caught.value.status == status
    assert caught.value.message == error.message


def test_sdk_automatic_function_calling(client: tuple[Any, str], server: Server) -> None:
    """The SDK runs a Python function the model called and sends its result back by itself."""
    sdk, version = client
    body = {"contents": [{"parts": [{"text": "x"}]}]}
    call = {"id": "call_7", "type": "function"}
    call["function"] = {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    usage = {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}
    first = _completion(
        {"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls", usage
    )
    second = _completion({"role": "assistant", "content": "Sunny in Oslo."}, "stop", usage)
    path = f"/{version}/models/{MODEL}:generateContent"
    server.serve("POST", path, _door(body).render(first), _door(body).render(second))
    answer = sdk.models.generate_content(
        model=MODEL, contents="Weather in Oslo?", config={"tools": [get_weather]}
    )
    assert answer.text == "Sunny in Oslo."
    assert len(server.seen) == 2
    chat = GeminiNative(server.seen[-1].body, request_id=RID, model=MODEL).chat_body()
    assert chat["messages"] == [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_7",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_7", "content": '{"result":"sunny"}'},
    ]


def test_sdk_image_bytes_reach_the_chat_body_intact(
    client: tuple[Any, str], server: Server
) -> None:
    """The SDK sends bytes URL-safe base64; the data: URL must hold the standard alphabet."""
    from google.genai import types

    sdk, version = client
    image = bytes(range(256))
    usage = {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
    reply = _completion({"role": "assistant", "content": "A gradient."}, "stop", usage)
    body = {"contents": [{"parts": [{"text": "x"}]}]}
    server.serve("POST", f"/{version}/models/{MODEL}:generateContent", _door(body).render(reply))
    parts = [types.Part.from_bytes(data=image, mime_type="image/png"), "What is this?"]
    assert sdk.models.generate_content(model=MODEL, contents=parts).text == "A gradient."
    chat = GeminiNative(server.seen[-1].body, request_id=RID, model=MODEL).chat_body()
    picture, question = chat["messages"][0]["content"]
    assert question == {"type": "text", "text": "What is this?"}
    prefix, _, data = picture["image_url"]["url"].partition(",")
    assert prefix == "data:image/png;base64"
    assert base64.b64decode(data, validate=True) == image
