"""Embeddings to an OpenAI-compatible upstream (protocols.md §14.1: `POST {base}/embeddings`;
OpenAI, Groq, OpenRouter, and `type: openai` servers such as vLLM, llama.cpp or Ollama's /v1).

The OpenAI door's body goes up as it came but for the model, and the answer comes back as it
came, except that base64 is made here when the client asked for it and the upstream sent floats
anyway (some local servers ignore `encoding_format`). The Gemini door's body is translated (its
texts as `input`, `outputDimensionality` as `dimensions`, floats asked for) and the answer
rendered in Gemini's shape."""

from __future__ import annotations

from typing import Any

import orjson

from relaygate.providers import _embeddings as em
from relaygate.providers._native import load_json
from relaygate.providers._openai_compat import OpenAICompatProvider
from relaygate.providers._passthrough import PassthroughRelay, Reader
from relaygate.providers.base import InBandFailure, bearer_headers
from relaygate.types import Failure, NativeBody, UpstreamRequest, Usage


def build(
    provider: OpenAICompatProvider, body: NativeBody, model: str, key: str | None
) -> UpstreamRequest:
    if body.door == em.OPENAI_DOOR:
        out: dict[str, Any] = {**body.body, "model": model}
    else:
        request = em.read(body)
        out = {"model": model, "input": request.texts(provider.name), "encoding_format": "float"}
        if request.dimensions is not None:
            out["dimensions"] = request.dimensions
    headers = bearer_headers(provider, key)
    return UpstreamRequest("POST", provider.base_url + "/embeddings", headers, orjson.dumps(out))


def _loaded(raw: bytes) -> dict[str, Any]:
    obj = load_json(raw)
    error = obj.get("error")
    if error is not None or not isinstance(obj.get("data"), list):
        message = error.get("message") if isinstance(error, dict) else error
        raise InBandFailure(Failure("server", 502, str(message or "upstream answer has no data")))
    return obj


def parse(body: bytes) -> Usage | None:
    return Usage.from_openai(_loaded(body).get("usage"))


def _usage_only(raw: bytes) -> Usage | None:
    """The usage of an answer the client takes as it came, read without parsing the vectors:
    the flat `"usage":{...}` object after the data, when the answer is a plain list of
    vectors with no error in it; None takes the full reading."""
    data = raw.find(b'"data":[')
    at = raw.rfind(b'"usage":{')
    if not raw.startswith(b"{") or data == -1 or at == -1:
        return None
    # the vectors hold numbers only: an "error" key can sit before them or after the last array
    if b'"error"' in raw[:data] or b'"error"' in raw[raw.rfind(b"]") :]:
        return None
    start = at + 8
    end = raw.find(b"}", start)
    try:
        usage = Usage.from_openai(orjson.loads(raw[start : end + 1]))
    except (orjson.JSONDecodeError, TypeError, ValueError):
        return None
    return usage if usage is not None and usage.prompt_tokens > 0 else None


def answer(raw: bytes, model: str, native: NativeBody) -> tuple[bytes, Usage | None]:
    if native.door == em.OPENAI_DOOR:  # the common case: floats asked and got, or base64 and got
        floats = native.body.get("encoding_format") != "base64" or b'"embedding":[' not in raw
        usage = _usage_only(raw) if floats else None
        if usage is not None:
            return raw, usage
    obj = _loaded(raw)
    request = em.read(native)
    usage = Usage.from_openai(obj.get("usage"))
    if usage is None or usage.prompt_tokens == 0:
        usage = request.estimate()
    items = sorted(
        (d for d in obj["data"] if isinstance(d, dict)), key=lambda d: d.get("index") or 0
    )
    if request.gemini:
        vectors = [em.decode(d.get("embedding")) for d in items]
        return em.render(request, vectors, usage, model), usage
    if request.base64 and any(isinstance(d.get("embedding"), list) for d in items):
        for d in items:
            if isinstance(d.get("embedding"), list):
                d["embedding"] = em.encode(d["embedding"])
        return orjson.dumps(obj), usage
    return raw, usage


def relay() -> PassthroughRelay:
    return PassthroughRelay(Reader())  # never used: embeddings do not stream
