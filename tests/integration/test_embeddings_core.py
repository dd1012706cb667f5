"""Embeddings through the core (SPEC §4, §6, §8, §9): key pools, fallback across a group, the
ledger row (route `embeddings`, input tokens, cost from the price table, `estimated` where the
upstream counts nothing), rate limits and budgets, errors in each door's shape (401, 405, 413,
a model with no target that serves embeddings, an upstream's own 400), and the library's
`Gateway.embed`."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from relaygate.config.model import Config
from relaygate.errors import InvalidRequest
from relaygate.gateway import Gateway
from tests.conftest import CLIENT_KEY
from tests.fakes import _native
from tests.fakes.embeddings import vector
from tests.fakes.openai_upstream import Reply, errors
from tests.integration._embed import GROUP, MODELS, OA_KEYS, PRICE, embed_config

OPENAI = MODELS["openai"]


def test_a_429_on_the_first_key_goes_to_the_second(embed_setup):
    s = embed_setup()
    s.openai.script(OA_KEYS[0], Reply(status=429, error=errors.rate_limit_minute("20s")))
    answer = s.post("/v1/embeddings", {"model": OPENAI, "input": ["a", "b"]})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-relaygate-attempts"] == "2"
    assert [c.key for c in s.openai.calls()] == list(OA_KEYS)
    again = s.post("/v1/embeddings", {"model": OPENAI, "input": "c"})  # the first one cools
    assert again.status_code == 200 and s.openai.calls()[-1].key == OA_KEYS[1]
    assert answer.headers["x-relaygate-key-id"] == again.headers["x-relaygate-key-id"]


def test_a_group_falls_back_to_the_next_target(embed_setup):
    s = embed_setup()
    s.openai.default = Reply(status=500)
    answer = s.post("/v1/embeddings", {"model": GROUP, "input": ["fall", "back"]})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-relaygate-provider"] == "gemini"
    assert [d["embedding"] for d in answer.json()["data"]] == [vector("fall"), vector("back")]
    assert len(s.openai.calls()) == 2 and len(s.gemini.calls()) == 1  # max_attempts 2, then on
    s.openai.default = Reply()
    assert (
        s.post("/v1/embeddings", {"model": GROUP, "input": "x"}).headers["x-relaygate-provider"]
        == "openai"
    )


def test_the_ledger_row_counts_and_bills_the_input(embed_setup):
    s = embed_setup()
    texts = ["one two three", "four five"]
    answer = s.post("/v1/embeddings", {"model": OPENAI, "input": texts})
    usage = answer.json()["usage"]
    assert usage == {"prompt_tokens": 7, "total_tokens": 7}  # the fake: words + 1 an input
    row = s.row(answer.headers["x-request-id"])
    assert (row["route"], row["provider"], row["model"]) == (
        "embeddings",
        "openai",
        "text-embedding-3-small",
    )
    assert (row["prompt_tokens"], row["completion_tokens"], row["status"]) == (7, 0, 200)
    assert row["cost_usd"] == pytest.approx(7 * PRICE / 1e6)
    assert not row["estimated"]

    gemini = s.post("/v1/embeddings", {"model": MODELS["gemini"], "input": "x" * 400})
    row = s.row(gemini.headers["x-request-id"])  # Gemini counts nothing: estimated
    assert row["estimated"] and row["prompt_tokens"] == 101 and row["route"] == "embeddings"
    assert gemini.json()["usage"]["prompt_tokens"] == 101

    ollama = s.post("/v1/embeddings", {"model": MODELS["ollama"], "input": ["a b", "c"]})
    row = s.row(ollama.headers["x-request-id"])  # prompt_eval_count
    assert (row["prompt_tokens"], row["estimated"]) == (5, 0)

    s.openai.default = Reply(embed_usage=False)
    bare = s.post("/v1/embeddings", {"model": OPENAI, "input": "abcdefgh"})
    row = s.row(bare.headers["x-request-id"])
    assert row["estimated"] and row["prompt_tokens"] == 3


def test_rpm_and_budget_hold_for_embeddings(embed_setup):
    clients = [
        {"name": "slow", "key": CLIENT_KEY, "rpm": 2},
        {
            "name": "capped",
            "key": "rg-embed-capped-0123456789abcdefghijkl",
            "monthly_budget_usd": 8e-6,
        },
    ]
    s = embed_setup(clients=clients)
    body = {"model": OPENAI, "input": "hi"}
    statuses = [s.post("/v1/embeddings", body).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    capped = {"Authorization": "Bearer rg-embed-capped-0123456789abcdefghijkl"}
    big = {"model": OPENAI, "input": ["many words here"] * 50}
    answers = [s.post("/v1/embeddings", big, **capped) for _ in range(3)]
    # each reserves its body's size (~340 tokens) at $0.02/M and spends 200 tokens: one fits
    assert answers[0].status_code == 200
    refused = answers[-1]
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
    assert [a.status_code for a in answers] == [200, 429, 429]
    assert len(s.openai.calls()) == 3


def test_errors_in_each_doors_shape(embed_setup):
    s = embed_setup()
    body = {"model": OPENAI, "input": "hi"}
    nokey = httpx.post(s.gw.v1 + "/embeddings", json=body)
    assert nokey.status_code == 401 and nokey.json()["error"]["code"] == "invalid_api_key"
    wrong = httpx.get(s.gw.v1 + "/embeddings", headers=s.gw.headers())
    assert wrong.status_code == 405 and "error" in wrong.json()
    big = s.post("/v1/embeddings", {"model": OPENAI, "input": "x" * (11 * 1024 * 1024)})
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    claude = s.post("/v1/embeddings", {"model": "claude/claude-sonnet-4-5", "input": "hi"})
    assert claude.status_code == 400 and claude.json()["error"]["param"] == "model"
    unknown = s.post("/v1/embeddings", {"model": "nowhere/x", "input": "hi"})
    assert unknown.status_code == 404
    s.openai.default = Reply(status=400, error=errors.context_length())
    rejected = s.post("/v1/embeddings", body)
    assert rejected.status_code == 400 and "maximum context length" in rejected.text
    assert not s.gemini.calls() and not s.ollama.calls()

    path = f"/v1beta/models/{MODELS['gemini']}:batchEmbedContents"
    gnokey = httpx.post(s.gw.base + path, json={"requests": []})
    assert gnokey.status_code == 401 and gnokey.json()["error"]["status"] == "UNAUTHENTICATED"
    gwrong = httpx.get(s.gw.base + path, headers={"x-goog-api-key": s.gw.key})
    assert gwrong.status_code == 405 and gwrong.json()["error"]["code"] == 405
    client = genai.Client(api_key="rg-not-a-key", http_options={"base_url": s.gw.base})
    with pytest.raises(genai_errors.ClientError) as refused:
        client.models.embed_content(model=MODELS["gemini"], contents="hi")
    assert refused.value.code == 401
    s.gemini.default = _native.Reply(status=503)
    client = genai.Client(api_key=s.gw.key, http_options=types.HttpOptions(base_url=s.gw.base))
    with pytest.raises(genai_errors.ServerError) as failed:
        client.models.embed_content(model=MODELS["gemini"], contents="hi")
    assert failed.value.code == 502 and failed.value.status == "UNAVAILABLE"


def test_the_library_embeds_like_the_server(embed_setup, tmp_path):
    s = embed_setup()  # the fakes; the library gets its own gateway on the same upstreams
    data = embed_config(s.openai, s.gemini, s.ollama)
    data["database_url"] = f"sqlite:///{tmp_path / 'lib.db'}"

    async def go():
        async with Gateway(Config.model_validate(data), persist=False) as gw:
            one = await gw.embed("hello", model=MODELS["gemini"])
            many = await gw.embed(["a", "b"], model=OPENAI, encoding_format="base64")
            short = await gw.embed(["a"], model=MODELS["ollama"], dimensions=3)
            with pytest.raises(InvalidRequest) as bad:
                await gw.embed([], model=OPENAI)
            return one, many, short, bad.value

    one, many, short, bad = asyncio.run(go())
    assert one["data"][0]["embedding"] == vector("hello") and one["object"] == "list"
    assert all(isinstance(d["embedding"], str) for d in many["data"])
    assert short["data"][0]["embedding"] == vector("a", 3)
    assert bad.param == "input"
