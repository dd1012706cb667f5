"""The embeddings doors' own contract (SPEC §7a, §8a): what each one accepts and refuses before
any upstream call (a 400 naming the field), that neither ever streams or reserves more than one
output token, the model read from a Gemini path, and errors in each door's shape."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from relaygate.errors import InvalidRequest, RateLimitExceeded, Unauthorized
from relaygate.formats.gemini_embeddings import GeminiBatchEmbed, GeminiEmbed
from relaygate.formats.openai_embeddings import OpenAIEmbeddings

RID = "req_0192f3c4d5e6a7b8c9d0e1f2a3b4c5d6"
TEXT = {"parts": [{"text": "hi"}]}


def openai_door(**fields: Any) -> OpenAIEmbeddings:
    body = {"model": "up/text-embedding-3-small", "input": "hi", **fields}
    return OpenAIEmbeddings({k: v for k, v in body.items() if v is not None}, request_id=RID)


@pytest.mark.parametrize(
    "given",
    [
        "hello",
        ["a", "b"],
        [1, 2, 3],
        [[1, 2], [3]],
        ["x"] * 2048,
    ],
)
def test_openai_door_accepts_every_input_openai_allows(given: Any) -> None:
    door = openai_door(input=given, encoding_format="base64", dimensions=256, user="u")
    assert door.chat_body()["model"] == "up/text-embedding-3-small"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": None}, "input"),
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": ["a", ""]}, "input"),
        ({"input": ["a", 1]}, "input"),
        ({"input": [1, [2]]}, "input"),
        ({"input": [[1], []]}, "input"),
        ({"input": [1.5]}, "input"),
        ({"input": [False]}, "input"),
        ({"input": ["a"] * 2049}, "input"),
        ({"model": None}, "model"),
        ({"model": ""}, "model"),
        ({"model": "a\nb"}, "model"),
        ({"model": "m" * 257}, "model"),
        ({"encoding_format": "binary"}, "encoding_format"),
        ({"dimensions": 0}, "dimensions"),
        ({"dimensions": -3}, "dimensions"),
        ({"dimensions": True}, "dimensions"),
        ({"dimensions": "256"}, "dimensions"),
        ({"user": ["u"]}, "user"),
    ],
)
def test_openai_door_refuses_a_wrong_field_naming_it(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        openai_door(**fields).chat_body()
    assert refused.value.param == param


def test_neither_door_streams_or_reserves_more_than_one_token() -> None:
    door = OpenAIEmbeddings({"model": "m", "input": "x", "stream": True}, request_id=RID)
    assert door.stream is False and door.output_limit() == 1
    gemini = GeminiBatchEmbed({"requests": []}, request_id=RID, model="models/m", stream=True)
    assert gemini.stream is False and gemini.output_limit() == 1
    assert gemini.model == "m"  # `models/` taken off, as the Gemini chat door does
    assert door.route == gemini.route == "embeddings"
    assert door.native_only and gemini.native_only


def test_gemini_doors_accept_what_the_sdk_and_rest_send() -> None:
    single = {"content": TEXT, "taskType": "RETRIEVAL_QUERY", "output_dimensionality": 8}
    GeminiEmbed(single, request_id=RID, model="m").chat_body()
    batch = {"requests": [{"model": "models/m", "content": {**TEXT, "role": "user"}}] * 3}
    GeminiBatchEmbed(batch, request_id=RID, model="m").chat_body()


@pytest.mark.parametrize(
    ("door", "body", "param"),
    [
        (GeminiEmbed, {}, "content"),
        (GeminiEmbed, {"content": "hi"}, "content"),
        (GeminiEmbed, {"content": {"parts": []}}, "content.parts"),
        (GeminiEmbed, {"content": {"parts": [{"inlineData": {}}]}}, "content.parts[0]"),
        (GeminiEmbed, {"content": TEXT, "outputDimensionality": 0}, "outputDimensionality"),
        (GeminiEmbed, {"content": TEXT, "title": 5}, "title"),
        (GeminiBatchEmbed, {}, "requests"),
        (GeminiBatchEmbed, {"requests": {}}, "requests"),
        (GeminiBatchEmbed, {"requests": [{"content": TEXT}, 5]}, "requests[1]"),
        (GeminiBatchEmbed, {"requests": [{"content": {}}]}, "requests[0].content.parts"),
        (GeminiBatchEmbed, {"requests": [{"content": TEXT}] * 2049}, "requests"),
    ],
)
def test_gemini_doors_refuse_a_wrong_field_naming_it(door: Any, body: Any, param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        door(body, request_id=RID, model="m").chat_body()
    assert refused.value.param == param


def test_errors_in_each_doors_shape() -> None:
    error = RateLimitExceeded("Rate limit reached.", retry_after_s=3)
    openai = orjson.loads(OpenAIEmbeddings.error_body(error, error.message))
    assert openai["error"]["code"] == "rate_limit_exceeded"
    gemini = orjson.loads(GeminiBatchEmbed.error_body(error, error.message))["error"]
    assert (gemini["code"], gemini["status"]) == (429, "RESOURCE_EXHAUSTED")
    denied = orjson.loads(GeminiEmbed.error_body(Unauthorized(), "no"))["error"]
    assert denied["code"] == 401
