"""Which front door serves a request (SPEC §7a): the table of proxied routes, each a door module
of relaygate.formats and an operation (a call through the core, a token count, a model list),
how the client key may be presented on it, and their entries in the OpenAPI schema. Matching
costs one dict lookup for the fixed paths; Gemini's `/{v1,v1beta}/models/{model}:{method}`
paths are parsed only when the path holds a colon."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from starlette.types import Scope

from relaygate.formats.base import Door

Op = Literal["chat", "count", "models", "not_allowed", "upload"]
_GOOGLE_KEY = b"x-goog-api-key"


@dataclass(frozen=True, slots=True)
class Route:
    door: type[Door]
    op: Op
    model: str | None = None  # from the path (Gemini)
    stream: bool | None = None  # from the path (Gemini)
    google_key: bool = False  # the key may also come as x-goog-api-key or ?key=


def _door(module: str) -> type[Door]:
    cls: type[Door] = importlib.import_module(f"relaygate.formats.{module}").DOOR
    return cls


def _seed(name: str) -> type[Door]:
    cls: type[Door] = getattr(importlib.import_module("relaygate.formats.seed"), name)
    return cls


def _gemini_module() -> Any:
    return importlib.import_module("relaygate.formats.gemini_native")


class Routes:
    """The proxied routes; `match(scope)` gives the Route of a request or None (not proxied)."""

    __slots__ = ("_embed", "_fixed", "_gemini", "_gemini_door", "_models", "_paths")

    def __init__(self) -> None:
        chat = _door("openai_chat")
        messages = _door("anthropic_messages")
        responses = _door("openai_responses")
        self._gemini_door = _door("gemini_native")
        self._gemini: Callable[[str], tuple[str, str, str] | None] = _gemini_module().parse_path
        self._fixed: dict[tuple[str, str], Route] = {
            ("POST", "/v1/chat/completions"): Route(chat, "chat"),
            ("POST", "/chat/completions"): Route(chat, "chat"),  # a root URL given as the base
            ("POST", "/v1/messages"): Route(messages, "chat"),
            ("POST", "/v1/messages/count_tokens"): Route(messages, "count"),
            ("POST", "/v1/responses"): Route(responses, "chat"),
            ("POST", "/v1/embeddings"): Route(_door("openai_embeddings"), "chat"),
            ("POST", "/embeddings"): Route(_door("openai_embeddings"), "chat"),  # a root base URL
        }
        embed = importlib.import_module("relaygate.formats.gemini_embeddings")
        self._embed = {"embedContent": embed.DOOR, "batchEmbedContents": embed.BATCH_DOOR}
        audio, prompt = _door("audio"), _door("seed")
        self._fixed[("POST", "/v1/audio/transcriptions")] = Route(audio, "upload")
        self._fixed[("POST", "/audio/transcriptions")] = Route(audio, "upload")
        for path in ("/chat", "/chat/json", "/v1/generate"):  # the seed routes (SPEC §7a)
            self._fixed[("POST", path)] = Route(prompt, "chat")
        self._fixed[("POST", "/ask")] = Route(_seed("ASK"), "chat")
        self._fixed[("POST", "/upload")] = Route(_seed("UPLOAD"), "upload")
        self._models = Route(self._gemini_door, "models", google_key=True)
        self._paths = {path: Route(r.door, "not_allowed") for (_, path), r in self._fixed.items()}

    def match(self, scope: Scope) -> Route | None:
        method, path = scope["method"], scope["path"]
        route = self._fixed.get((method, path))
        if route is not None:
            return route
        route = self._paths.get(path)
        if route is not None:  # a proxied path, another method: 405 in the door's shape
            return route
        if method == "GET":
            if path == "/v1beta/models":
                return self._models
            if path == "/v1/models" and _google_client(scope):  # genai's list, not OpenAI's
                return self._models
        if ":" not in path:
            return None
        parsed = self._gemini(path)
        if parsed is None:
            return None
        _, model, action = parsed
        if method != "POST":
            return Route(self._gemini_door, "not_allowed", google_key=True)
        if action == "generateContent":
            return Route(self._gemini_door, "chat", model, False, True)
        if action == "streamGenerateContent":
            return Route(self._gemini_door, "chat", model, True, True)
        if action == "countTokens":
            return Route(self._gemini_door, "count", model, None, True)
        if action in self._embed:
            return Route(self._embed[action], "chat", model, False, True)
        return None


def _google_client(scope: Scope) -> bool:
    """A request as the google-genai SDK sends it: its key header, or `?key=`."""
    if any(name == _GOOGLE_KEY for name, _ in scope["headers"]):
        return True
    query: bytes = scope.get("query_string", b"")
    return query.startswith(b"key=") or b"&key=" in query


def openapi_paths() -> dict[str, Any]:
    """The proxied routes for the OpenAPI schema (they are served ahead of FastAPI)."""

    def op(summary: str, example: dict[str, Any] | None = None) -> dict[str, Any]:
        entry: dict[str, Any] = {"summary": summary, "tags": ["client"], "responses": {}}
        entry["responses"]["200"] = {"description": "The answer, or an event stream"}
        if example is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"type": "object"}, "example": example}},
            }
        return entry

    hello = [{"role": "user", "content": "Hello there"}]
    model = "echo/hello"  # provider-name-ok
    return {
        "/v1/chat/completions": {
            "post": op("OpenAI chat completions", {"model": model, "messages": hello})
        },
        "/chat/completions": {"post": op("OpenAI chat completions (for a root base URL)")},
        "/v1/messages": {
            "post": op("Anthropic Messages", {"model": model, "max_tokens": 64, "messages": hello})
        },
        "/v1/messages/count_tokens": {
            "post": op("Anthropic token count", {"model": model, "messages": hello})
        },
        "/v1/responses": {"post": op("OpenAI Responses", {"model": model, "input": "Hello"})},
        "/{version}/models/{model}:generateContent": {"post": op("Gemini generateContent")},
        "/{version}/models/{model}:streamGenerateContent": {
            "post": op("Gemini streamGenerateContent (?alt=sse)")
        },
        "/{version}/models/{model}:countTokens": {"post": op("Gemini countTokens")},
        "/v1/embeddings": {
            "post": op("OpenAI embeddings", {"model": "text-embedding-3-small", "input": "Hello"})
        },
        "/embeddings": {"post": op("OpenAI embeddings (for a root base URL)")},
        "/{version}/models/{model}:embedContent": {"post": op("Gemini embedContent")},
        "/{version}/models/{model}:batchEmbedContents": {"post": op("Gemini batchEmbedContents")},
        "/v1beta/models": {"get": op("Gemini model list")},
        **_upload_paths(op),
    }


_FORMATS = ["json", "text", "verbose_json", "srt", "vtt"]


def _upload_paths(op: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """The audio and seed routes' entries."""

    def form(summary: str, fields: dict[str, Any], required: list[str]) -> dict[str, Any]:
        entry = op(summary)
        schema = {"type": "object", "properties": fields, "required": required}
        entry["requestBody"] = {
            "required": True,
            "content": {"multipart/form-data": {"schema": schema}},
        }
        return entry

    audio = {
        "file": {"type": "string", "format": "binary"},
        "model": {"type": "string", "example": "whisper-1"},
        "response_format": {"type": "string", "enum": _FORMATS},
        "language": {"type": "string"},
        "prompt": {"type": "string"},
        "temperature": {"type": "number"},
    }
    transcribe = form("Audio transcription (multipart, up to 25 MiB)", audio, ["file", "model"])
    prompt = {"prompt": "Hello there"}
    return {
        "/v1/audio/transcriptions": {"post": transcribe},
        "/audio/transcriptions": {"post": form("Audio transcription (root base URL)", audio, [])},
        "/chat": {"post": op("Seed route: a prompt (form field or JSON) -> {response}", prompt)},
        "/chat/json": {"post": op("Seed route: {prompt} -> {response, model, usage}", prompt)},
        "/v1/generate": {"post": op("Seed route: {prompt, model} -> {response}", prompt)},
        "/ask": {"post": op("Seed route: {input} -> {response, model, usage}", {"input": "Hi"})},
        "/upload": {
            "post": form("Seed route: an audio file, transcribed", {"file": audio["file"]}, [])
        },
    }
