"""Embeddings to Ollama's native API (protocols.md §14.3: `POST /api/embed` `{"model", "input",
"dimensions"?}` -> `{"embeddings": [[floats]], "prompt_eval_count"}`): either embeddings door's
texts go up as `input` (a string for one, else a list; token ids are a 400), the answer comes
back in the door's shape (OpenAI's list, base64 made here when asked; or Gemini's) with usage
from `prompt_eval_count`."""

from __future__ import annotations

from typing import Any

import orjson

from relaygate.providers import _embeddings as em
from relaygate.providers._native import as_int, load_json
from relaygate.providers._passthrough import PassthroughRelay, Reader
from relaygate.providers.base import InBandFailure, Provider, bearer_headers
from relaygate.types import Failure, NativeBody, UpstreamRequest, Usage


def build(provider: Provider, body: NativeBody, model: str, key: str | None) -> UpstreamRequest:
    request = em.read(body)
    texts = request.texts(provider.name)
    out: dict[str, Any] = {"model": model, "input": texts[0] if request.single else texts}
    if request.dimensions is not None:
        out["dimensions"] = request.dimensions
    headers = bearer_headers(provider, key)
    return UpstreamRequest("POST", provider.base_url + "/api/embed", headers, orjson.dumps(out))


def _loaded(raw: bytes) -> dict[str, Any]:
    obj = load_json(raw)
    if "error" in obj or not isinstance(obj.get("embeddings"), list):
        raise InBandFailure(Failure("server", 502, str(obj.get("error") or "no embeddings")))
    return obj


def parse(body: bytes) -> Usage | None:
    return Usage(as_int(_loaded(body).get("prompt_eval_count")), 0)


def answer(raw: bytes, model: str, native: NativeBody) -> tuple[bytes, Usage | None]:
    obj = _loaded(raw)
    request = em.read(native)
    counted = as_int(obj.get("prompt_eval_count"))
    usage = Usage(counted, 0) if counted else request.estimate()
    vectors = [em.decode(v) for v in obj["embeddings"]]
    return em.render(request, vectors, usage, str(obj.get("model") or model)), usage


def relay() -> PassthroughRelay:
    return PassthroughRelay(Reader())  # never used: embeddings do not stream
