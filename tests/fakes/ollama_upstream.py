"""A fake Ollama server (native /api/chat) on a real socket, speaking protocols.md §5 exactly: no
auth (a bearer token is recorded when sent), `stream` true unless the body says false, NDJSON
(`application/x-ndjson`) ending with a `done: true` line, `{"error": "..."}` bodies and lines, and
404 for a model that is not pulled. Scriptable per key (tests.fakes._native.Reply)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tests.fakes._native import (
    FakeUpstream,
    Reply,
    answer_pieces,
    count_words,
    read_json,
    write,
)


def _error(status: int, body: dict[str, Any] | str, headers: dict[str, str] | None = None):
    if isinstance(body, str):
        body = {"error": body}
    return web.json_response(body, status=status, headers=headers or {})


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            return str(message.get("content") or "")
    return ""


class FakeOllama(FakeUpstream):
    def __init__(self, *, models: list[str] | None = None) -> None:
        super().__init__()
        self.models = models  # None: every model is pulled

    @property
    def base_url(self) -> str:
        return self.base

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/api/chat", self._chat)
        app.router.add_post("/api/embed", self._embed)
        app.router.add_get("/api/tags", self._tags)
        return app

    async def _embed(self, request: web.Request) -> web.Response:
        from tests.fakes import embeddings

        auth = request.headers.get("Authorization", "")
        key = auth[7:] if auth.startswith("Bearer ") else None
        body = await read_json(request)
        self._record(request, key, body)
        model = str(body.get("model") or "") if isinstance(body, dict) else ""
        if self.models is not None and model not in self.models:
            return _error(404, f'model "{model}" not found, try pulling it first')
        reply = self._next(key)
        if reply.status != 200:
            return _error(reply.status, reply.error or "an error was encountered", reply.headers)
        status, answer = embeddings.ollama_answer(body)
        return web.json_response(answer, status=status)

    async def _tags(self, request: web.Request) -> web.Response:
        """`GET /api/tags` (protocols.md §5.1): the local models, `name` with its tag."""
        auth = request.headers.get("Authorization", "")
        with self._lock:
            self.listings.append(auth[7:] if auth.startswith("Bearer ") else None)
        names = self.listed_models or list(self.models or ())
        models = [
            {
                "name": n if ":" in n else f"{n}:latest",
                "model": n if ":" in n else f"{n}:latest",
                "modified_at": _now(),
                "size": 4661224676,
                "digest": "0" * 64,
                "details": {"format": "gguf", "family": "llama"},
            }
            for n in names
        ]
        return web.json_response({"models": models})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        key = auth[7:] if auth.startswith("Bearer ") else None
        body = await read_json(request)
        self._record(request, key, body)
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(400, "invalid request: messages is required")
        for message in body["messages"]:
            if not isinstance(message.get("content", ""), str):
                return _error(400, "json: cannot unmarshal array into Go struct field .content")
        model = str(body.get("model") or "")
        if self.models is not None and model not in self.models:
            return _error(404, f'model "{model}" not found, try pulling it first')
        reply = self._next(key)
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.status != 200:
            error = reply.error or "an error was encountered while running the model"
            return _error(reply.status, error, reply.headers)
        answer = _Answer(body, reply, model)
        if body.get("stream", True):  # Ollama streams unless told not to
            return await answer.stream(request)
        return web.json_response(answer.whole())


class _Answer:
    def __init__(self, body: dict[str, Any], reply: Reply, model: str) -> None:
        self.reply, self.model = reply, model
        self.pieces = answer_pieces(reply, _last_user_text(body))
        self.calls = reply.tool_calls or []
        prompt = count_words(body.get("messages")) + 7
        self.prompt, self.output = reply.usage or (prompt, len(self.pieces) + 10 * len(self.calls))

    def line(self, message: dict[str, Any], done: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "created_at": _now(),
            "message": {"role": "assistant", **message},
            "done": done,
        }
        if done:
            out.update(
                done_reason=self.reply.finish or "stop",
                total_duration=182242375,
                load_duration=41295167,
                prompt_eval_count=self.prompt,
                prompt_eval_duration=24573166,
                eval_count=self.output,
                eval_duration=115959084,
            )
        return out

    def tool_calls(self) -> list[dict[str, Any]]:
        return [
            {"function": {"name": c["name"], "arguments": json.loads(c["arguments"])}}
            for c in self.calls
        ]

    def whole(self) -> dict[str, Any]:
        message: dict[str, Any] = {"content": "".join(self.pieces)}
        if self.reply.thinking:
            message["thinking"] = self.reply.thinking
        if self.calls:
            message["tool_calls"] = self.tool_calls()
        return self.line(message, done=True)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        reply = self.reply

        async def send(obj: dict[str, Any]) -> None:
            await write(resp, json.dumps(obj, separators=(",", ":")).encode() + b"\n", reply)

        if reply.thinking:
            await send(self.line({"content": "", "thinking": reply.thinking}))
        for n, piece in enumerate(self.pieces):
            if n == reply.inband_error_after:
                await send({"error": "an error was encountered while running the model"})
                return resp
            if n == reply.cut_after:
                return resp
            await send(self.line({"content": piece}))
        if self.calls:  # tool calls arrive complete in one line
            await send(self.line({"content": "", "tool_calls": self.tool_calls()}))
        await send(self.line({"content": ""}, done=True))
        return resp
