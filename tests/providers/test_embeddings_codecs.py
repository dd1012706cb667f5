"""The embeddings codecs' contract (protocols.md §14), over recorded cases in
fixtures_embeddings/<provider>.json: each case is a client body from one of the two embeddings
doors (`door`: openai_embeddings or gemini_embeddings) for a `target` model, and

- `expected_request`: the upstream request the provider's codec builds (`method`, `url`,
  `headers`, `body`), or `{"error": {"param"}}` when the codec refuses it (a 400);
- `answer`: the upstream's answer as the provider sends it, and `expected_answer`: the body the
  client gets (`"as-it-came"`: the upstream's bytes untouched), or `{"inband_error": kind}`;
- `expected_usage`: [input tokens, estimated].

Every codec module a provider declares must come with cases of both doors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from relaygate.config.model import ProviderConfig
from relaygate.errors import InvalidRequest
from relaygate.providers import registry
from relaygate.providers.base import InBandFailure, Provider, codec_answer, native_codec
from relaygate.types import NativeBody

FIXTURES = Path(__file__).parent / "fixtures_embeddings"
KEY = "sk-test-fixture-key"
DOORS = ("openai_embeddings", "gemini_embeddings")


def make(name: str) -> Provider:
    return registry.create(name, ProviderConfig(type=name, keys=[KEY]))


def cases() -> list[Any]:
    out = []
    for path in sorted(FIXTURES.glob("*.json")):
        for case in json.loads(path.read_text()):
            out.append(pytest.param(path.stem, case, id=f"{path.stem}/{case['id']}"))
    return out


def test_every_embeddings_codec_has_cases() -> None:
    """Each provider serves both embeddings doors or neither, and each codec module a provider
    declares is run over cases of both doors (providers sharing a module share its cases)."""
    covered: dict[str, set[str]] = {}
    for path in FIXTURES.glob("*.json"):
        provider = make(path.stem)
        for case in json.loads(path.read_text()):
            covered.setdefault(provider.native_doors[case["door"]], set()).add(case["door"])
    for name in registry.builtin_names():
        provider = make(name)
        declared = [d for d in DOORS if d in provider.native_doors]
        if not declared:
            continue
        assert set(declared) == set(DOORS), f"{name}: serves one embeddings door, not both"
        for door in DOORS:
            module = provider.native_doors[door]
            assert door in covered.get(module, set()), f"{name}: no {door} case for {module}"


@pytest.mark.parametrize(("name", "case"), cases())
def test_codec(name: str, case: dict[str, Any]) -> None:
    provider = make(name)
    codec = native_codec(provider, case["door"])
    assert codec is not None
    native = NativeBody(case["door"], case["body"], False, only=True)
    want = case["expected_request"]
    if "error" in want:
        with pytest.raises(InvalidRequest) as refused:
            codec.build(provider, native, case["target"], KEY)
        assert refused.value.param == want["error"]["param"]
        return
    request = codec.build(provider, native, case["target"], KEY)
    assert request.method == want["method"]
    assert request.url == want["url"]
    assert dict(request.headers) == want["headers"]
    assert orjson.loads(request.body) == want["body"]

    raw = orjson.dumps(case["answer"])
    expected = case["expected_answer"]
    if isinstance(expected, dict) and "inband_error" in expected:
        with pytest.raises(InBandFailure) as failed:
            codec_answer(codec, raw, case["target"], native)
        assert failed.value.failure.kind == expected["inband_error"]
        return
    body, usage = codec_answer(codec, raw, case["target"], native)
    if expected == "as-it-came":
        assert body == raw
    else:
        assert orjson.loads(body) == expected
    assert usage is not None
    assert [usage.prompt_tokens, usage.estimated] == case["expected_usage"]
    assert usage.completion_tokens == 0


def test_openai_answer_fast_path_reads_usage_and_falls_back_when_it_cannot() -> None:
    """The vectors are not parsed when the usage object can be read alone; a nested usage or an
    error in the answer takes the full reading, which gives the same usage."""
    import orjson

    from relaygate.providers import _embed_openai
    from relaygate.types import NativeBody

    native = NativeBody("openai_embeddings", {"model": "m", "input": "hi"}, False)
    plain = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.5]}]}
    flat = orjson.dumps({**plain, "usage": {"prompt_tokens": 3, "total_tokens": 3}})
    out, usage = _embed_openai.answer(flat, "m", native)
    assert out is flat and usage is not None and usage.prompt_tokens == 3
    nested_usage = {"prompt_tokens": 4, "total_tokens": 4, "prompt_tokens_details": {"x": 1}}
    nested = orjson.dumps({**plain, "usage": nested_usage})
    out, usage = _embed_openai.answer(nested, "m", native)
    assert usage is not None and usage.prompt_tokens == 4
    asked = NativeBody("openai_embeddings", {**native.body, "encoding_format": "base64"}, False)
    out, usage = _embed_openai.answer(flat, "m", asked)  # floats although base64 was asked
    assert b'"embedding":"' in out and usage is not None and usage.prompt_tokens == 3
