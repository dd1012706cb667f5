"""The built-in echo provider: answers without any upstream by echoing the last user message,
streamed word by word, with token usage. A newcomer's first call works with no provider key."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from relaygate.providers._openai_compat import OpenAICompatProvider
from relaygate.providers._sse import data_event
from relaygate.providers.base import ProviderMeta
from relaygate.transport.base import NO_OPTIONS, RequestOptions, Transport
from relaygate.types import Failure, UpstreamRequest, UpstreamResponse

META = ProviderMeta(kind="echo", needs_key=False)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def _tokens(text: str) -> int:
    return max(1, len(text.split())) if text else 0


class _EchoResponse:
    """An in-process stand-in for an upstream answer in OpenAI's exact shapes."""

    def __init__(self, body: dict[str, Any], model: str) -> None:
        self.status = 200
        messages = [m for m in body.get("messages", ()) if isinstance(m, dict)]
        users = [m for m in messages if m.get("role") == "user"]
        self.reply = _text(users[-1].get("content")) if users else ""
        self.prompt_tokens = sum(_tokens(_text(m.get("content"))) for m in messages)
        cap = body.get("max_completion_tokens") or body.get("max_tokens")
        self.words = self.reply.split()
        self.finish = "stop"
        if isinstance(cap, int) and 0 < cap < len(self.words):
            self.words, self.finish = self.words[:cap], "length"
        self.stream = bool(body.get("stream"))
        self.model = model
        self.id = f"chatcmpl-echo{uuid.uuid4().hex[:20]}"
        self.created = int(time.time())
        ctype = "text/event-stream; charset=utf-8" if self.stream else "application/json"
        self.headers: Mapping[str, str] = {"content-type": ctype}

    def _usage(self) -> dict[str, Any]:
        done = len(self.words)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": done,
            "total_tokens": self.prompt_tokens + done,
        }

    def _chunk(self, delta: dict[str, Any], finish: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return data_event(orjson.dumps(self._frame("chat.completion.chunk", [choice])))

    def _frame(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    async def read(self, limit: int) -> bytes:
        message = {"role": "assistant", "content": " ".join(self.words)}
        frame = self._frame(
            "chat.completion", [{"index": 0, "message": message, "finish_reason": self.finish}]
        )
        frame["usage"] = self._usage()
        return orjson.dumps(frame)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        yield self._chunk({"role": "assistant", "content": ""}, None)
        for i, word in enumerate(self.words):
            yield self._chunk({"content": word if i == 0 else " " + word}, None)
        yield self._chunk({}, self.finish)
        usage = self._frame("chat.completion.chunk", [])
        usage["usage"] = self._usage()
        yield data_event(orjson.dumps(usage))
        yield data_event(b"[DONE]")

    def close(self) -> None:
        return None


class Provider(OpenAICompatProvider):
    meta = META
    native_doors: Mapping[str, str] = {}  # chat only: no embeddings in process

    def models(self) -> list[str]:
        return [*self.config.models] or ["echo"]

    def models_request(self, key: str | None) -> UpstreamRequest | None:
        return None  # nothing upstream to ask

    def build_request(
        self, body: dict[str, Any], *, model: str, key: str | None, stream: bool
    ) -> UpstreamRequest:
        payload = dict(body)
        sent = body.get("model")  # answered under the name the client sent (`echo/hello`)
        payload["model"] = sent if isinstance(sent, str) and sent else f"{self.name}/{model}"
        payload["stream"] = stream
        return UpstreamRequest("POST", "echo:", {}, json=payload)

    async def send(
        self,
        transport: Transport,
        request: UpstreamRequest,
        *,
        timeout_s: float | None,
        options: RequestOptions = NO_OPTIONS,
    ) -> UpstreamResponse:
        assert request.json is not None
        return _EchoResponse(request.json, str(request.json["model"]))

    def classify_error(self, status: int, headers: Mapping[str, str], body: bytes) -> Failure:
        return Failure("server", status, "echo failed")
