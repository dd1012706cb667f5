"""Embeddings to the Gemini API (protocols.md §14.2), the key pool included.

The Gemini door's body goes up as it came, to the action the client called (`:embedContent`
for one content, `:batchEmbedContents` for `requests`), but for the model (each batch entry
names the target's), and the answer comes back as it came. The OpenAI door's body is translated:
one string to `:embedContent`, a list to `:batchEmbedContents` (one entry per input, in order),
`dimensions` to `outputDimensionality`; token ids are a 400 (text only). The answer comes back
in OpenAI's list shape, base64 made here when asked. Gemini documents no token count for these
methods: a `usageMetadata.promptTokenCount` is used when one comes, else the input is estimated
(the row marked estimated)."""

from __future__ import annotations

from typing import Any

import orjson

from relaygate.providers import _embeddings as em
from relaygate.providers import gemini as native
from relaygate.providers._gemini_errors import inband_failure
from relaygate.providers._native import as_int, load_json
from relaygate.providers._passthrough import PassthroughRelay, Reader
from relaygate.providers.base import InBandFailure
from relaygate.types import Failure, NativeBody, UpstreamRequest, Usage


def _entry(text: str, dims: int | None, model: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {} if model is None else {"model": f"models/{model}"}
    out["content"] = {"parts": [{"text": text}]}
    if dims is not None:
        out["outputDimensionality"] = dims
    return out


def build(
    provider: native.Provider, body: NativeBody, model: str, key: str | None
) -> UpstreamRequest:
    name = model.removeprefix("models/")
    if body.door == em.GEMINI_DOOR:
        requests = em.gemini_requests(body.body)
        if requests is None:
            out: dict[str, Any] = dict(body.body)
            if "model" in out:
                out["model"] = f"models/{name}"
        else:
            fixed = [{**r, "model": f"models/{name}"} for r in requests if isinstance(r, dict)]
            out = {**body.body, "requests": fixed}
    else:
        request = em.read(body)
        texts = request.texts(provider.name)
        if request.single:
            out = _entry(texts[0], request.dimensions, None)
        else:
            out = {"requests": [_entry(t, request.dimensions, name) for t in texts]}
    action = ":batchEmbedContents" if "requests" in out else ":embedContent"
    return provider.model_request(model, action, key, orjson.dumps(out))


def _loaded(raw: bytes) -> dict[str, Any]:
    obj = load_json(raw)
    if "error" in obj:
        raise InBandFailure(inband_failure(obj))
    return obj


def _counted(obj: dict[str, Any]) -> int:
    meta = obj.get("usageMetadata")
    return as_int(meta.get("promptTokenCount")) if isinstance(meta, dict) else 0


def parse(body: bytes) -> Usage | None:
    counted = _counted(_loaded(body))
    return Usage(counted, 0) if counted else None


def _vectors(obj: dict[str, Any]) -> list[list[float]]:
    single = obj.get("embedding")
    items = [single] if isinstance(single, dict) else obj.get("embeddings")
    if not isinstance(items, list):
        raise InBandFailure(Failure("server", 502, "upstream answer has no embeddings"))
    return [em.decode(item.get("values") if isinstance(item, dict) else None) for item in items]


def answer(raw: bytes, model: str, native: NativeBody) -> tuple[bytes, Usage | None]:
    obj = _loaded(raw)
    request = em.read(native)
    counted = _counted(obj)
    usage = Usage(counted, 0) if counted else request.estimate()
    vectors = _vectors(obj)
    if request.gemini:
        if len(vectors) != len(request.inputs):
            message = f"upstream sent {len(vectors)} embeddings for {len(request.inputs)} inputs"
            raise InBandFailure(Failure("server", 502, message))
        return raw, usage  # the client's own format: as it came
    return em.render(request, vectors, usage, model.removeprefix("models/")), usage


def relay() -> PassthroughRelay:
    return PassthroughRelay(Reader())  # never used: embeddings do not stream
