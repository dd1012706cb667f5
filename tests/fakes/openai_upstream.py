"""A fake OpenAI-compatible upstream on a real socket, speaking protocols.md §1-2 exactly.

Scriptable per upstream key: each key has a queue of `Reply`s (used in order, the last one
repeats) and every request is recorded. Error bodies are the recorded ones (see `errors`)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes._scripted import Scripted


@dataclass
class Reply:
    status: int = 200
    error: dict[str, Any] | None = None  # the JSON body of an error answer
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # before the status line
    hang: bool = False  # never answer
    text: str | None = None  # None: "Echo: <last user text>"
    chunks: int | None = None  # stream: number of content chunks (default: one per word)
    chunk_delay_s: float = 0.0
    first_chunk_delay_s: float = 0.0
    tool_calls: list[dict[str, Any]] | None = None  # [{"name", "arguments" (JSON string)}]
    usage: tuple[int, int] | None = None  # (prompt, completion); default computed
    finish_reason: str | None = None
    inband_error_after: int | None = None  # stream: data:{"error"} after N content chunks
    cut_after: int | None = None  # stream: close after N content chunks, without [DONE]
    crlf: bool = False
    split_writes: bool = False  # write each event in two TCP pieces, split mid-line
    comments: bool = False  # OpenRouter-style ": OPENROUTER PROCESSING" comment lines
    groq_usage: bool = False  # x_groq.usage on the final chunk, even without include_usage
    usage_chunk: bool = True  # stream: False ignores include_usage (no trailing usage chunk)
    inband_error_first: bool = False  # stream: 200, then data:{"error"} before any chunk
    oversized_after: int | None = None  # stream: after N content chunks, 5 MiB with no boundary
    body_override: dict[str, Any] | None = None  # non-streaming: answer this JSON as is
    floats_only: bool = False  # embeddings: floats whatever encoding_format says (local servers)
    embed_usage: bool = True  # embeddings: False sends no usage object


class FakeOpenAI(Scripted[Reply]):
    def __init__(self, *, require_key: bool = True) -> None:
        self.require_key = require_key
        super().__init__(Reply())
        self.listed_models = ["gpt-4o-mini"]

    @property
    def base_url(self) -> str:
        return self.base + "/v1"

    # --- the server ---------------------------------------------------------------------------
    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/audio/transcriptions", self._audio)
        return app

    async def _audio(self, request: web.Request) -> web.StreamResponse:
        from tests.fakes import audio_upstream

        return await audio_upstream.serve(self, request, "openai")

    async def _models(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        key = auth[7:] if auth.startswith("Bearer ") else None
        with self._lock:
            self.listings.append(key)
        if (self.require_key and not key) or key in self.bad_keys:
            return _error(401, errors.invalid_key())
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "system"}
            for m in self.listed_models
        ]
        return web.json_response({"object": "list", "data": data})

    async def _begin(self, request: web.Request) -> tuple[str | None, Any, web.Response | None]:
        """The key and body of a request, recorded; the 401 when a key is required and absent."""
        auth = request.headers.get("Authorization", "")
        key = auth[7:] if auth.startswith("Bearer ") else None
        body = await request.json()
        self._record(request, key, body)
        refused = _error(401, errors.invalid_key()) if self.require_key and not key else None
        return key, body, refused

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        from tests.fakes import openai_responses

        key, body, refused = await self._begin(request)
        if refused is not None:
            return refused
        reply = self._next(key)
        if reply.status != 200:
            return _error(reply.status, reply.error or errors.server_error(), reply.headers)
        return await openai_responses.answer(request, body, reply)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        from tests.fakes import embeddings

        key, body, refused = await self._begin(request)
        if refused is not None:
            return refused
        reply = self._next(key)
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.status != 200:
            return _error(reply.status, reply.error or errors.server_error(), reply.headers)
        problem = embeddings.openai_problem(body)
        if problem is not None:
            invalid = {"message": problem, "type": "invalid_request_error", "param": None}
            return _error(400, {"error": {**invalid, "code": None}})
        if reply.body_override is not None:
            return web.json_response(reply.body_override)
        answer = embeddings.openai_answer(
            body, floats_only=reply.floats_only, usage=reply.embed_usage
        )
        return web.json_response(answer, headers=reply.headers)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        key, body, refused = await self._begin(request)
        if refused is not None:
            return refused
        reply = self._next(key)
        if reply.hang:
            await asyncio.sleep(3600)
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.status != 200:
            return _error(reply.status, reply.error or errors.server_error(), reply.headers)
        headers = {"x-request-id": f"req_{uuid.uuid4().hex}", **reply.headers}
        if body.get("stream"):
            return await self._stream(request, body, reply, headers)
        return web.json_response(reply.body_override or _completion(body, reply), headers=headers)

    async def _stream(
        self, request: web.Request, body: dict[str, Any], reply: Reply, headers: dict[str, str]
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            status=200, headers={**headers, "Content-Type": "text/event-stream; charset=utf-8"}
        )
        await resp.prepare(request)
        nl = b"\r\n" if reply.crlf else b"\n"
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def send(payload: dict[str, Any] | bytes) -> None:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            event = b"data: " + data + nl + nl
            if reply.comments:
                await resp.write(b": OPENROUTER PROCESSING" + nl + nl)
            if reply.split_writes and len(event) > 4:
                half = len(event) // 2
                await resp.write(event[:half])
                await asyncio.sleep(0.002)
                await resp.write(event[half:])
            else:
                await resp.write(event)

        cid, created, model = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), body["model"]

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            out: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": None,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if include_usage:
                out["usage"] = None
            return out

        if reply.first_chunk_delay_s:
            await asyncio.sleep(reply.first_chunk_delay_s)
        pieces, prompt, completion = _pieces(body, reply)
        if reply.inband_error_first:
            await send(errors.server_error())
            return resp
        await send(
            chunk(
                {
                    "role": "assistant",
                    "content": "" if not reply.tool_calls else None,
                    "refusal": None,
                }
            )
        )
        if reply.tool_calls:
            for i, call in enumerate(reply.tool_calls):
                await send(
                    chunk(
                        {
                            "tool_calls": [
                                {
                                    "index": i,
                                    "id": f"call_{uuid.uuid4().hex[:20]}",
                                    "type": "function",
                                    "function": {"name": call["name"], "arguments": ""},
                                }
                            ]
                        }
                    )
                )
                args = call["arguments"]
                for j in range(0, len(args), 8):
                    await send(
                        chunk(
                            {
                                "tool_calls": [
                                    {"index": i, "function": {"arguments": args[j : j + 8]}}
                                ]
                            }
                        )
                    )
        for n, piece in enumerate(pieces):
            if reply.inband_error_after is not None and n == reply.inband_error_after:
                await send(
                    {
                        "error": {
                            "message": "The server had an error while processing "
                            "your request. Sorry about that!",
                            "type": "server_error",
                            "param": None,
                            "code": None,
                        }
                    }
                )
                return resp
            if reply.cut_after is not None and n == reply.cut_after:
                return resp
            if reply.oversized_after is not None and n == reply.oversized_after:
                await resp.write(b"data: " + b"x" * (5 * 1024 * 1024))
                return resp
            if reply.chunk_delay_s:
                await asyncio.sleep(reply.chunk_delay_s)
            await send(chunk({"content": piece}))
        finish = chunk({}, reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop"))
        usage = usage_object(prompt, completion)
        if reply.groq_usage:
            finish["x_groq"] = {"id": "req_x", "usage": usage}
        await send(finish)
        if include_usage and reply.usage_chunk:
            final = chunk({})
            final["choices"], final["usage"] = [], usage
            await send(final)
        await send(b"[DONE]")
        return resp


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if p.get("type") == "text")
            return str(content or "")
    return ""


def _pieces(body: dict[str, Any], reply: Reply) -> tuple[list[str], int, int]:
    text = reply.text if reply.text is not None else f"Echo: {_last_user_text(body)}"
    words = text.split(" ")
    if reply.chunks is not None:
        words = (words * (reply.chunks // max(1, len(words)) + 1))[: reply.chunks]
    pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
    prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", [])) + 7
    completion = len(pieces) + (len(reply.tool_calls) * 10 if reply.tool_calls else 0)
    if reply.usage is not None:
        prompt, completion = reply.usage
    return pieces, prompt, completion


def usage_object(prompt: int, completion: int) -> dict[str, Any]:
    """OpenAI's usage object, as chat completions and their last stream chunk carry it."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _completion(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    pieces, prompt, completion = _pieces(body, reply)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(pieces),
        "refusal": None,
        "annotations": [],
    }
    if reply.tool_calls:
        message["content"] = None
        message["tool_calls"] = [
            {
                "id": f"call_{uuid.uuid4().hex[:20]}",
                "type": "function",
                "function": {"name": c["name"], "arguments": c["arguments"]},
            }
            for c in reply.tool_calls
        ]
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": reply.finish_reason
                or ("tool_calls" if reply.tool_calls else "stop"),
            }
        ],
        "usage": usage_object(prompt, completion),
        "service_tier": "default",
        "system_fingerprint": None,
    }


def _error(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(body, status=status, headers=headers or {})


class errors:
    @staticmethod
    def invalid_key() -> dict[str, Any]:
        return {
            "error": {
                "message": "Incorrect API key provided: sk-VKMIs***wjh3. You can find "
                "your API key at https://platform.openai.com/account/api-keys.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        }

    @staticmethod
    def rate_limit_minute(wait: str = "26.604s") -> dict[str, Any]:
        return {
            "error": {
                "message": "Rate limit reached for gpt-4 in organization org-abc on "
                "tokens per min (TPM): Limit 10000, Used 9348, Requested 5086. Please "
                f"try again in {wait}. Visit https://platform.openai.com/account/"
                "rate-limits to learn more.",
                "type": "tokens",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        }

    @staticmethod
    def rate_limit_day(wait: str = "7m12s") -> dict[str, Any]:
        return {
            "error": {
                "message": "Rate limit reached for gpt-4o-mini in organization org-abc "
                "on requests per day (RPD): Limit 200, Used 200, Requested 1. Please "
                f"try again in {wait}. Visit https://platform.openai.com/account/"
                "rate-limits to learn more.",
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        }

    @staticmethod
    def insufficient_quota() -> dict[str, Any]:
        return {
            "error": {
                "message": "You exceeded your current quota, please check your plan and "
                "billing details. For more information on this error, read the docs: "
                "https://platform.openai.com/docs/guides/error-codes/api-errors.",
                "type": "insufficient_quota",
                "param": None,
                "code": "insufficient_quota",
            }
        }

    @staticmethod
    def groq_tokens_per_day() -> dict[str, Any]:
        return {
            "error": {
                "message": "Rate limit reached for model `llama-3.3-70b-versatile` in "
                "organization `org_01kes94v04f9ramd2n1vj4gjnc` service tier `on_demand` "
                "on tokens per day (TPD): Limit 100000, Used 97050, Requested 3619. "
                "Please try again in 9m38.016s. Need more tokens? Upgrade to Dev Tier "
                "today at https://console.groq.com/settings/billing",
                "type": "tokens",
                "code": "rate_limit_exceeded",
            }
        }

    @staticmethod
    def groq_invalid_key() -> dict[str, Any]:
        return {
            "error": {
                "message": "Invalid API Key",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }
        }

    @staticmethod
    def openrouter_credits() -> dict[str, Any]:
        return {
            "error": {
                "code": 402,
                "message": "Insufficient credits. Add more using https://openrouter.ai/credits",
                "metadata": {"limit_source": "openrouter_credits"},
            }
        }

    @staticmethod
    def openrouter_free_per_day(reset_ms: int) -> dict[str, Any]:
        return {
            "error": {
                "message": "Rate limit exceeded: free-models-per-day. Add 10 credits to "
                "unlock 1000 free model requests per day",
                "code": 429,
                "metadata": {
                    "headers": {
                        "X-RateLimit-Limit": "50",
                        "X-RateLimit-Remaining": "0",
                        "X-RateLimit-Reset": str(reset_ms),
                    }
                },
            }
        }

    @staticmethod
    def server_error() -> dict[str, Any]:
        return {
            "error": {
                "message": "The server had an error processing your request. Sorry "
                "about that! You can retry your request.",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        }

    @staticmethod
    def context_length() -> dict[str, Any]:
        return {
            "error": {
                "message": "This model's maximum context length is 16385 tokens. "
                "However, your messages resulted in 16468 tokens. Please reduce the "
                "length of the messages.",
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            }
        }
