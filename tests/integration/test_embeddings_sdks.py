"""Embeddings end to end with the official SDKs (SPEC §7a, protocols.md §14), on every kind of
target that serves them (OpenAI-compatible, Gemini, Ollama; fake upstreams on real sockets):

- the openai SDK's `embeddings.create`: a string, a list, the SDK's default (it asks for base64
  and decodes it), floats, explicit base64 (strings returned untouched), `dimensions`;
- the google-genai SDK's `models.embed_content`, one content and several, with both API
  versions it uses (v1 by default, v1beta), `task_type` and `output_dimensionality`;
- a LangChain-style batch (what OpenAIEmbeddings sends: 100 inputs in one request, as strings
  or token-id arrays, `encoding_format: base64`), and the unprefixed `/embeddings`;
- an upstream that ignores `encoding_format` (floats back): the client still gets base64.

The vectors the clients decode are compared with the fake's own (tests/fakes/embeddings.py)."""

from __future__ import annotations

import base64
import struct

import openai
import pytest
from google import genai
from google.genai import types

from tests.fakes.embeddings import vector
from tests.fakes.openai_upstream import Reply
from tests.integration._embed import GEMINI_KEY, MODELS, OA_KEYS

KINDS = list(MODELS)


def floats(text: str) -> list[float]:
    raw = base64.b64decode(text)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


@pytest.mark.parametrize("kind", KINDS)
def test_openai_sdk_embeddings_create_on_every_target(embed_setup, kind):
    s = embed_setup()
    client = openai.OpenAI(base_url=s.gw.v1, api_key=s.gw.key, max_retries=0)
    model = MODELS[kind]

    one = client.embeddings.create(model=model, input="hello world")  # the SDK asks base64
    assert [d.embedding for d in one.data] == [vector("hello world")]
    assert one.object == "list" and one.usage.prompt_tokens > 0

    texts = ["first text", "second", "third one here"]
    many = client.embeddings.create(model=model, input=texts)
    assert [d.index for d in many.data] == [0, 1, 2]
    assert [d.embedding for d in many.data] == [vector(t) for t in texts]

    flat = client.embeddings.create(model=model, input=texts, encoding_format="float")
    assert [d.embedding for d in flat.data] == [vector(t) for t in texts]

    raw = client.embeddings.create(model=model, input=["x y"], encoding_format="base64")
    assert isinstance(raw.data[0].embedding, str)  # asked for explicitly: left to the caller
    assert floats(raw.data[0].embedding) == vector("x y")

    short = client.embeddings.create(model=model, input="cut me", dimensions=4)
    assert short.data[0].embedding == vector("cut me", 4)

    sent = s.fake(kind).calls()
    if kind == "openai":
        assert sent[0].json["encoding_format"] == "base64"  # passed through as it came
        assert sent[0].json["model"] == "text-embedding-3-small"
        assert sent[-1].json["dimensions"] == 4
    elif kind == "gemini":
        assert [c.path.rsplit(":", 1)[1] for c in sent[:2]] == [
            "embedContent",
            "batchEmbedContents",
        ]
        assert sent[1].json["requests"][2]["content"] == {"parts": [{"text": texts[2]}]}
        assert sent[-1].json["outputDimensionality"] == 4
        assert all(c.key == GEMINI_KEY for c in sent)
    else:
        assert [c.path for c in sent] == ["/api/embed"] * 5
        assert sent[0].json == {"model": "nomic-embed-text", "input": "hello world"}
        assert sent[-1].json["dimensions"] == 4


@pytest.mark.parametrize("version", [None, "v1beta"])
@pytest.mark.parametrize("kind", KINDS)
def test_genai_sdk_embed_content_on_every_target(embed_setup, kind, version):
    s = embed_setup()
    options: dict[str, str] = {"base_url": s.gw.base}
    if version:
        options["api_version"] = version
    client = genai.Client(api_key=s.gw.key, http_options=types.HttpOptions(**options))
    model = MODELS[kind]

    single = client.models.embed_content(model=model, contents="what is an embedding")
    assert [e.values for e in single.embeddings] == [vector("what is an embedding")]

    texts = ["alpha", "beta gamma", "delta"]
    config = types.EmbedContentConfig(task_type="RETRIEVAL_DOCUMENT", output_dimensionality=4)
    batch = client.models.embed_content(model=model, contents=texts, config=config)
    assert [e.values for e in batch.embeddings] == [vector(t, 4) for t in texts]

    sent = s.fake(kind).calls()[-1]
    if kind == "gemini":  # passed through but for the model, taskType kept
        assert sent.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
        entries = sent.json["requests"]
        assert {e["model"] for e in entries} == {"models/gemini-embedding-001"}
        assert {e["taskType"] for e in entries} == {"RETRIEVAL_DOCUMENT"}
    elif kind == "openai":
        assert sent.json == {
            "model": "text-embedding-3-small",
            "input": texts,
            "encoding_format": "float",
            "dimensions": 4,
        }
    else:
        assert sent.json == {"model": "nomic-embed-text", "input": texts, "dimensions": 4}


def test_gemini_embed_content_rest_answers_one_embedding(embed_setup):
    s = embed_setup()
    body = {"content": {"parts": [{"text": "one "}, {"text": "text"}]}, "taskType": "CLUSTERING"}
    for kind in KINDS:
        path = f"/v1beta/models/{MODELS[kind]}:embedContent"
        answer = s.post(path, body, **{"x-goog-api-key": s.gw.key})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"embedding": {"values": vector("one text")}}
        assert answer.headers["x-relaygate-provider"] == kind


@pytest.mark.parametrize("kind", KINDS)
def test_a_langchain_style_batch_of_100_inputs(embed_setup, kind):
    s = embed_setup()
    texts = [f"document number {i} about things" for i in range(100)]
    body = {"model": MODELS[kind], "input": texts, "encoding_format": "base64"}
    answer = s.post("/v1/embeddings", body)
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert [d["index"] for d in data] == list(range(100))
    assert [floats(d["embedding"]) for d in data] == [vector(t) for t in texts]
    assert len(s.fake(kind).calls()) == 1  # one upstream call for the whole batch


def test_a_langchain_style_batch_of_token_arrays(embed_setup):
    """OpenAIEmbeddings (check_embedding_ctx_length) sends tiktoken ids: passed through to an
    OpenAI-compatible target, a 400 naming `input` for targets that take text only."""
    s = embed_setup()
    tokens = [[1000 + i, 2000 + i, 3000 + i] for i in range(100)]
    body = {"model": MODELS["openai"], "input": tokens, "encoding_format": "base64"}
    answer = s.post("/v1/embeddings", body)
    assert answer.status_code == 200, answer.text
    assert [floats(d["embedding"]) for d in answer.json()["data"]] == [vector(t) for t in tokens]
    assert s.openai.calls()[0].json["input"] == tokens
    for kind in ("gemini", "ollama"):
        refused = s.post("/v1/embeddings", {**body, "model": MODELS[kind]})
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "input"
        assert s.fake(kind).calls() == []


def test_the_unprefixed_route_and_an_upstream_that_ignores_base64(embed_setup):
    s = embed_setup()
    s.openai.default = Reply(floats_only=True)  # a local server that always sends floats
    client = openai.OpenAI(base_url=s.gw.base, api_key=s.gw.key, max_retries=0)  # root URL
    got = client.embeddings.create(model=MODELS["openai"], input=["a", "b"])
    assert [d.embedding for d in got.data] == [vector("a"), vector("b")]
    raw = s.post(
        "/embeddings", {"model": MODELS["openai"], "input": "a", "encoding_format": "base64"}
    )
    assert floats(raw.json()["data"][0]["embedding"]) == vector("a")
    assert {c.key for c in s.openai.calls()} <= set(OA_KEYS)
