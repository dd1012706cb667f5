"""The embeddings endpoints of the fake upstreams (protocols.md §14), each in its provider's
exact shape: OpenAI's `POST /v1/embeddings` (floats or base64 of little-endian float32, usage),
Gemini's `:embedContent` / `:batchEmbedContents` (values, no token count, each batch entry
naming the path's model), Ollama's `POST /api/embed` (embeddings, prompt_eval_count).

Vectors are deterministic: `vector(text, dims)` is what every fake answers for a text (or a
token-id array, by its repr), so a test can check the values the client decoded."""

from __future__ import annotations

import base64
import hashlib
import struct
from typing import Any

DIMS = 8  # the fakes' default vector length


def vector(text: object, dims: int | None = None) -> list[float]:
    """A deterministic vector of float32-exact values for a text (or token ids)."""
    seed = hashlib.sha256(repr(text).encode()).digest()
    n = dims or DIMS
    return [((seed[i % 32] + i) % 256) / 256 - 0.5 for i in range(n)]


def b64(values: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


def _words(text: object) -> int:
    return len(text) if isinstance(text, list) else len(str(text).split())


# --- OpenAI -------------------------------------------------------------------------------------
def openai_problem(body: Any) -> str | None:
    """What OpenAI refuses with a 400 (protocols.md §14.1)."""
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return "you must provide a model parameter"
    given = body.get("input")
    if isinstance(given, str):
        return None if given else "'$.input' is invalid."
    if not isinstance(given, list) or not given or len(given) > 2048:
        return "'$.input' is invalid. Please check the API reference."
    if any(v == "" for v in given):
        return "'$.input' is invalid. Please check the API reference."
    if body.get("encoding_format") not in (None, "float", "base64"):
        return "Invalid value for 'encoding_format'."
    dims = body.get("dimensions")
    if dims is not None and (not isinstance(dims, int) or dims < 1):
        return "Invalid value for 'dimensions'."
    return None


def openai_answer(body: dict[str, Any], *, floats_only: bool = False,
                  usage: bool = True) -> dict[str, Any]:  # fmt: skip
    given = body["input"]
    single = isinstance(given, str) or (isinstance(given, list) and isinstance(given[0], int))
    inputs = [given] if single else given
    dims = body.get("dimensions")
    wants_b64 = body.get("encoding_format") == "base64" and not floats_only
    data = []
    for i, item in enumerate(inputs):
        values = vector(item, dims)
        data.append(
            {"object": "embedding", "index": i, "embedding": b64(values) if wants_b64 else values}
        )
    out: dict[str, Any] = {"object": "list", "data": data, "model": body["model"]}
    if usage:
        tokens = sum(_words(i) for i in inputs) + len(inputs)
        out["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return out


# --- Gemini -------------------------------------------------------------------------------------
def _text(request: dict[str, Any]) -> str:
    parts = (request.get("content") or {}).get("parts") or []
    return "".join(str(p.get("text") or "") for p in parts)


def gemini_answer(method: str, model: str, body: Any) -> tuple[int, dict[str, Any]]:
    """(status, body) for `:embedContent` or `:batchEmbedContents` of `model`."""
    invalid = 400, {"error": {"code": 400, "message": "", "status": "INVALID_ARGUMENT"}}
    if not isinstance(body, dict):
        invalid[1]["error"]["message"] = "Invalid JSON payload received."
        return invalid
    if method == "embedContent":
        if not _text(body):
            invalid[1]["error"]["message"] = "* EmbedContentRequest.content: contents is not set"
            return invalid
        dims = body.get("outputDimensionality")
        return 200, {"embedding": {"values": vector(_text(body), dims)}}
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        invalid[1]["error"]["message"] = "* BatchEmbedContentsRequest.requests: is empty"
        return invalid
    out = []
    for i, request in enumerate(requests):
        if request.get("model") != f"models/{model}":
            message = f"* BatchEmbedContentsRequest.requests[{i}].model: model mismatch"
            invalid[1]["error"]["message"] = message
            return invalid
        if not _text(request):
            invalid[1]["error"]["message"] = f"* requests[{i}].content: contents is not set"
            return invalid
        out.append({"values": vector(_text(request), request.get("outputDimensionality"))})
    return 200, {"embeddings": out}


# --- Ollama -------------------------------------------------------------------------------------
def ollama_answer(body: Any) -> tuple[int, dict[str, Any]]:
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return 400, {"error": "model is required"}
    given = body.get("input")
    inputs = [given] if isinstance(given, str) else given
    if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
        return 400, {"error": "invalid input type"}
    dims = body.get("dimensions")
    vectors = [vector(text, dims) for text in inputs]
    out = {
        "model": body["model"],
        "embeddings": vectors,
        "total_duration": 14143917,
        "load_duration": 1019500,
        "prompt_eval_count": sum(_words(i) for i in inputs) + len(inputs),
    }
    return 200, out
