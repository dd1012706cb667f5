"""What every embeddings codec shares (protocols.md §14): the request read from either
embeddings door's body (OpenAI's `/v1/embeddings`, or Gemini's `:embedContent` /
`:batchEmbedContents`), and the answer rendered in that door's shape from a list of vectors.

OpenAI's shape: `{"object": "list", "data": [{"object": "embedding", "index", "embedding"}],
"model", "usage": {"prompt_tokens", "total_tokens"}}`, the vectors as floats or, when the client
asked `encoding_format: base64`, as base64 of little-endian float32 (made here when the target
sends floats). Gemini's: `{"embedding": {"values"}}` for one content, `{"embeddings": [...]}`
for a batch. Usage is the upstream's count where it sends one, else an estimate (4 bytes of
text a token; token-id inputs count exactly) marked estimated."""

from __future__ import annotations

import base64
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from relaygate.errors import InvalidRequest
from relaygate.providers.base import InBandFailure
from relaygate.types import Failure, NativeBody, Usage

OPENAI_DOOR = "openai_embeddings"
GEMINI_DOOR = "gemini_embeddings"
BYTES_PER_TOKEN = 4


@dataclass(slots=True)
class EmbedRequest:
    """One embeddings request, whichever door it came by."""

    inputs: list[Any]  # texts, or token-id arrays (`tokens`)
    tokens: bool
    single: bool  # one input, given alone (not in an array)
    dimensions: int | None
    base64: bool  # the client wants base64 vectors (the OpenAI door)
    gemini: bool  # the client speaks Gemini: the answer goes back in Gemini's shape

    def texts(self, provider: str) -> list[str]:
        """The inputs as texts; token ids are a 400 for a target that takes only text."""
        if self.tokens:
            raise InvalidRequest(
                f"{provider} takes text only: send 'input' as strings, not token ids.",
                param="input",
            )
        return list(self.inputs)

    def estimate(self) -> Usage:
        if self.tokens:
            return Usage(sum(len(ids) for ids in self.inputs), 0, estimated=True)
        size = sum(len(text.encode()) for text in self.inputs)
        return Usage(size // BYTES_PER_TOKEN + len(self.inputs), 0, estimated=True)


def _get(obj: Any, camel: str, snake: str) -> Any:
    if not isinstance(obj, Mapping):
        return None
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


def content_text(request: Any) -> str:
    """The text of one Gemini EmbedContentRequest's content (its text parts, joined)."""
    parts = _get(_get(request, "content", "content"), "parts", "parts") or ()
    return "".join(str(p.get("text") or "") for p in parts if isinstance(p, Mapping))


def gemini_requests(body: Mapping[str, Any]) -> list[Any] | None:
    """A batch body's requests (None: an `:embedContent` body)."""
    found = body.get("requests")
    return found if isinstance(found, list) else None


def dimensionality(request: Any) -> int | None:
    value = _get(request, "outputDimensionality", "output_dimensionality")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def read(native: NativeBody) -> EmbedRequest:
    body = native.body
    if native.door == GEMINI_DOOR:
        requests = gemini_requests(body)
        single = requests is None
        items = [body] if requests is None else requests
        texts = [content_text(item) for item in items]
        return EmbedRequest(texts, False, single, dimensionality(items[0]), False, True)
    given: Any = body.get("input")
    single = isinstance(given, str) or (isinstance(given, list) and isinstance(given[0], int))
    inputs = [given] if single else list(given)
    tokens = not isinstance(inputs[0], str)
    dims = body.get("dimensions")
    wants = body.get("encoding_format") == "base64"
    return EmbedRequest(inputs, tokens, single, dims, wants, False)


def encode(vector: list[float]) -> str:
    """Little-endian float32, base64 with padding (what OpenAI sends for `base64`)."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def decode(value: Any) -> list[float]:
    """A vector as floats, from floats or from OpenAI's base64."""
    if isinstance(value, str):
        raw = base64.b64decode(value)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    if not isinstance(value, list):
        raise InBandFailure(Failure("server", 502, "upstream sent an embedding of no known shape"))
    return value


def render(request: EmbedRequest, vectors: list[list[float]], usage: Usage, model: str) -> bytes:
    """The answer in the door's shape."""
    if len(vectors) != len(request.inputs):
        message = f"upstream sent {len(vectors)} embeddings for {len(request.inputs)} inputs"
        raise InBandFailure(Failure("server", 502, message))
    if request.gemini:
        if request.single:
            return orjson.dumps({"embedding": {"values": vectors[0]}})
        return orjson.dumps({"embeddings": [{"values": v} for v in vectors]})
    data = [
        {"object": "embedding", "index": i, "embedding": encode(v) if request.base64 else v}
        for i, v in enumerate(vectors)
    ]
    counts = {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens}
    return orjson.dumps({"object": "list", "data": data, "model": model, "usage": counts})
