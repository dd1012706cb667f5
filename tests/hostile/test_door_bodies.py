"""Hostile bodies on every front door (SPEC §7a, §8, §8a): the bodies that are not one JSON
object (the chat table's, test_bodies.BAD_JSON), fields of the wrong type in each door's own
format, and a body over the limit, to POST /v1/messages, /v1/messages/count_tokens,
/v1/responses, /v1/embeddings, /embeddings and Gemini's :generateContent,
:streamGenerateContent, :countTokens, :embedContent and :batchEmbedContents.

Each case checks: a 400 (or 413) in the door's own error shape, no upstream call, no 500, no
canary secret in the answer or the log, no traceback; the same bodies without a valid key get the
fixed 401 in the door's shape."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.hostile.conftest import AUTH, MODEL, Case, Hostile, run_case
from tests.hostile.test_bodies import BAD_JSON, LIMIT

JSON = ("content-type", "application/json")
GEMINI = f"/v1beta/models/{MODEL}"
ROUTES = {
    "messages": "/v1/messages",
    "count_tokens": "/v1/messages/count_tokens",
    "responses": "/v1/responses",
    "generate": f"{GEMINI}:generateContent",
    "stream": f"/v1/models/{MODEL}:streamGenerateContent?alt=sse",
    "count": f"{GEMINI}:countTokens",
    "embeddings": "/v1/embeddings",
    "embeddings_root": "/embeddings",
    "embed": f"{GEMINI}:embedContent",
    "batch_embed": f"/v1/models/{MODEL}:batchEmbedContents",
}
TEXT = {"parts": [{"text": "hi"}]}
HI = [{"role": "user", "content": "hi"}]
GOOD: dict[str, dict[str, Any]] = {
    "messages": {"model": MODEL, "max_tokens": 16, "messages": HI},
    "count_tokens": {"model": MODEL, "messages": HI},
    "responses": {"model": MODEL, "input": "hi"},
    "generate": {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
    "stream": {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
    "count": {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
    "embeddings": {"model": MODEL, "input": ["hi", "there"]},
    "embeddings_root": {"model": MODEL, "input": "hi", "encoding_format": "base64"},
    "embed": {"content": TEXT, "outputDimensionality": 4},
    "batch_embed": {"requests": [{"model": f"models/{MODEL}", "content": TEXT}]},
}
# (door, case id, fields set over the good body)
WRONG: list[tuple[str, str, dict[str, Any]]] = [
    ("messages", "messages-string", {"messages": "hi"}),
    ("messages", "messages-of-numbers", {"messages": [1, 2]}),
    ("messages", "role-system-in-messages", {"messages": [{"role": "system", "content": "x"}]}),
    ("messages", "content-number", {"messages": [{"role": "user", "content": 5}]}),
    (
        "messages",
        "block-unknown-type",
        {"messages": [{"role": "user", "content": [{"type": "x"}]}]},
    ),
    (
        "messages",
        "image-without-source",
        {"messages": [{"role": "user", "content": [{"type": "image"}]}]},
    ),
    ("messages", "max_tokens-string", {"max_tokens": "16"}),
    ("messages", "max_tokens-zero", {"max_tokens": 0}),
    ("messages", "max_tokens-true", {"max_tokens": True}),
    ("messages", "system-number", {"system": 5}),
    ("messages", "tools-string", {"tools": "x"}),
    ("messages", "tool_choice-number", {"tool_choice": 5}),
    ("messages", "stop_sequences-string", {"stop_sequences": 7}),
    ("messages", "temperature-string", {"temperature": "hot"}),
    ("messages", "stream-string", {"stream": "yes"}),
    ("messages", "model-crlf", {"model": "up/gpt\r\n-4o"}),
    ("count_tokens", "messages-missing", {"messages": None}),
    ("count_tokens", "tools-object", {"tools": {"a": 1}}),
    ("responses", "input-number", {"input": 5}),
    ("responses", "input-items-numbers", {"input": [1, 2]}),
    ("responses", "item-unknown-role", {"input": [{"role": "robot", "content": "x"}]}),
    ("responses", "instructions-number", {"instructions": 5}),
    ("responses", "tools-string", {"tools": "x"}),
    ("responses", "previous_response_id", {"previous_response_id": "resp_123"}),
    ("responses", "text-format-string", {"text": {"format": "json"}}),
    ("responses", "max_output_tokens-negative", {"max_output_tokens": -1}),
    ("responses", "item_reference", {"input": [{"type": "item_reference", "id": "x"}]}),
    ("generate", "contents-string", {"contents": "hi"}),
    ("generate", "contents-numbers", {"contents": [1]}),
    ("generate", "parts-string", {"contents": [{"role": "user", "parts": "hi"}]}),
    ("generate", "generationConfig-string", {"generationConfig": "x"}),
    ("generate", "maxOutputTokens-string", {"generationConfig": {"maxOutputTokens": "9"}}),
    ("generate", "tools-number", {"tools": 5}),
    ("stream", "contents-missing", {"contents": None}),
    ("count", "contents-number", {"contents": 3}),
    ("embeddings", "input-missing", {"input": None}),
    ("embeddings", "input-empty-string", {"input": ""}),
    ("embeddings", "input-empty-list", {"input": []}),
    ("embeddings", "input-number", {"input": 5}),
    ("embeddings", "input-mixed", {"input": ["a", 1]}),
    ("embeddings", "input-empty-string-in-list", {"input": ["a", ""]}),
    ("embeddings", "input-negative-token", {"input": [1, -2]}),
    ("embeddings", "input-bool-token", {"input": [True]}),
    ("embeddings", "input-empty-token-array", {"input": [[1], []]}),
    ("embeddings", "input-2049-entries", {"input": ["a"] * 2049}),
    ("embeddings", "input-object", {"input": {"text": "a"}}),
    ("embeddings", "model-missing", {"model": None}),
    ("embeddings", "model-number", {"model": 5}),
    ("embeddings", "model-crlf", {"model": "up/gpt\r\n-4o"}),
    ("embeddings", "encoding_format-hex", {"encoding_format": "hex"}),
    ("embeddings", "dimensions-zero", {"dimensions": 0}),
    ("embeddings", "dimensions-string", {"dimensions": "8"}),
    ("embeddings", "dimensions-true", {"dimensions": True}),
    ("embeddings", "dimensions-float", {"dimensions": 1.5}),
    ("embeddings", "user-number", {"user": 5}),
    ("embeddings_root", "input-nested-strings", {"input": [["a"]]}),
    ("embed", "content-missing", {"content": None}),
    ("embed", "content-string", {"content": "hi"}),
    ("embed", "parts-empty", {"content": {"parts": []}}),
    ("embed", "part-image", {"content": {"parts": [{"inlineData": {"data": "AA=="}}]}}),
    ("embed", "outputDimensionality-negative", {"outputDimensionality": -1}),
    ("embed", "taskType-number", {"taskType": 3}),
    ("batch_embed", "requests-missing", {"requests": None}),
    ("batch_embed", "requests-empty", {"requests": []}),
    ("batch_embed", "request-string", {"requests": ["hi"]}),
    ("batch_embed", "request-no-content", {"requests": [{"model": "models/x"}]}),
]


def body(door: str, fields: dict[str, Any]) -> bytes:
    merged = {**GOOD[door], **fields}
    return orjson.dumps({k: v for k, v in merged.items() if v is not None})


def case(door: str, id_: str, content: Any, *, status: int = 400, **kw: Any) -> Case:
    return Case(
        f"{door}-{id_}",
        "POST",
        ROUTES[door],
        content,
        headers=kw.pop("headers", (*AUTH.items(), JSON)),
        status=status,
        code=kw.pop("code", "invalid_request" if status == 400 else None),
        **kw,
    )


CODES = {"previous_response_id": "previous_response_not_found"}  # else invalid_request
CASES = [
    case(door, id_, body(door, fields), code=CODES.get(id_, "invalid_request"))
    for door, id_, fields in WRONG
]
CASES += [case(door, id_, raw, param=None) for door in ROUTES for id_, raw in BAD_JSON]
CASES += [
    case(
        door,
        "over-10MiB",
        lambda: b'{"x": "' + b"x" * LIMIT + b'"}',
        status=413,
        code="request_too_large",
        heavy=True,
    )
    for door in ("messages", "responses", "generate", "embeddings", "batch_embed")
]
NO_KEY = [
    case(door, f"{id_}-no-key", raw, status=401, code="invalid_api_key", headers=(JSON,))
    for door in ROUTES
    for id_, raw in BAD_JSON[:3]
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_a_bad_door_body_is_refused_in_the_doors_shape(hostile: Hostile, case: Case) -> None:
    run_case(hostile, case)


@pytest.mark.parametrize("case", NO_KEY, ids=lambda c: c.id)
def test_a_door_body_without_a_key_gets_the_fixed_401(hostile: Hostile, case: Case) -> None:
    run_case(hostile, case)


@pytest.mark.parametrize("door", list(ROUTES))
def test_a_good_door_body_is_served(hostile: Hostile, door: str) -> None:
    """The control: the good body of each door is answered 200 (so the 400s above are the
    fields' doing)."""
    answer = case(door, "good", body(door, {}), status=200, upstream_ok=True)
    run_case(hostile, answer)
