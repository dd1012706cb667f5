"""A fake Anthropic Messages API on a real socket, speaking protocols.md §3 exactly: `x-api-key`
and `anthropic-version` enforced, `max_tokens` required, SSE with `event:` lines equal to the JSON
`type`, pings between blocks, `message_stop` at the end (no [DONE]), `event: error` mid-stream,
past `thinking` blocks without a signature refused, `POST /v1/messages/count_tokens`, and the
recorded error bodies (see `errors`). Scriptable per key (tests.fakes._native.Reply)."""

from __future__ import annotations

import asyncio
import json
import uuid
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

VERSION = "2023-06-01"
# the versions the API accepts: the one every tool sends, its predecessor, and the one the current
# SDK (2.13) sends (protocols.md §12.1); any other value, or none, is refused
VERSIONS = frozenset({"2023-01-01", VERSION, "2026-10-21"})


def _error(status: int, body: dict[str, Any] | str, headers: dict[str, str] | None = None):
    if isinstance(body, str):
        return web.Response(status=status, text=body, headers=headers or {})
    return web.json_response(
        body, status=status, headers={"request-id": "req_fake", **(headers or {})}
    )


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        texts = [b.get("text", "") for b in content if b.get("type") == "text"]
        if texts:
            return " ".join(texts)
    return ""


class FakeAnthropic(FakeUpstream):
    @property
    def base_url(self) -> str:
        return self.base  # the SDK convention: the client adds /v1/messages

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/messages/count_tokens", self._count_tokens)
        app.router.add_get("/v1/models", self._models)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        """`GET /v1/models`: `{"data": [{"type": "model", "id", ...}], "has_more", ...}`."""
        key = request.headers.get("x-api-key")
        with self._lock:
            self.listings.append(key)
        if not key or key in self.bad_keys:
            return _error(401, errors.invalid_key())
        data = [
            {"type": "model", "id": m, "display_name": m, "created_at": "2025-09-29T00:00:00Z"}
            for m in self.listed_models
        ]
        first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
        return web.json_response(
            {"data": data, "has_more": False, "first_id": first, "last_id": last}
        )

    async def _begin(self, request: web.Request) -> tuple[str | None, Any, web.Response | None]:
        """The key and body of a request, recorded; the refusal of a missing key or version."""
        key = request.headers.get("x-api-key")
        body = await read_json(request)
        self._record(request, key, body)
        if not key:
            return key, body, _error(401, errors.invalid_key())
        if request.headers.get("anthropic-version") not in VERSIONS:
            message = "anthropic-version: header is required"
            return key, body, _error(400, errors.invalid_request(message))
        return key, body, None

    async def _count_tokens(self, request: web.Request) -> web.Response:
        """`{"input_tokens"}` (protocols.md §12.1), counted as a Message's input is."""
        _, body, refused = await self._begin(request)
        if refused is not None:
            return refused
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(400, errors.invalid_request("messages: Field required"))
        return web.json_response({"input_tokens": _input_tokens(body)})

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        key, body, refused = await self._begin(request)
        if refused is not None:
            return refused
        problem = _check(body)
        if problem:
            return _error(400, errors.invalid_request(problem))
        reply = self._next(key)
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.status != 200:
            return _error(reply.status, reply.error or errors.overloaded(), reply.headers)
        headers = {"request-id": f"req_{uuid.uuid4().hex[:24]}", **reply.headers}
        answer = _Answer(body, reply)
        if body.get("stream"):
            return await answer.stream(request, headers)
        return web.json_response(answer.message(), headers=headers)


def _check(body: Any) -> str | None:
    """What the real API would refuse with a 400 (a mistranslation shows up here)."""
    if not isinstance(body, dict):
        return "body: not a JSON object"
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        return "max_tokens: Field required"
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Input should be a valid integer greater than or equal to 1"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for i, message in enumerate(messages):
        if message.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        content = message.get("content")
        if not content and not (i == len(messages) - 1 and message.get("role") == "assistant"):
            return (
                f"messages.{i}: all messages must have non-empty content except for the "
                "optional final assistant message"
            )
        problem = _check_thinking(i, message)
        if problem:
            return problem
    temperature = body.get("temperature")
    if temperature is not None and not 0 <= temperature <= 1:
        return "temperature: Input should be less than or equal to 1"
    return None


def _check_thinking(i: int, message: dict[str, Any]) -> str | None:
    """A past `thinking` block must carry the signature Anthropic gave it (the API checks it)."""
    content = message.get("content")
    if message.get("role") != "assistant" or not isinstance(content, list):
        return None
    for j, block in enumerate(content):
        if not isinstance(block, dict) or block.get("type") != "thinking":
            continue
        signature = block.get("signature")
        if signature is None:
            return f"messages.{i}.content.{j}.thinking.signature: Field required"
        if not isinstance(signature, str) or not signature:
            return f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block"
    return None


def _input_tokens(body: dict[str, Any]) -> int:
    """The stand-in input count of a Message or a count_tokens request: words + 7."""
    return count_words(body.get("messages")) + count_words(body.get("system")) + 7


class _Answer:
    def __init__(self, body: dict[str, Any], reply: Reply) -> None:
        self.body, self.reply = body, reply
        self.pieces = answer_pieces(reply, _last_user_text(body))
        self.calls = reply.tool_calls or []
        prompt = _input_tokens(body)
        completion = len(self.pieces) + 10 * len(self.calls)
        self.input, self.output = reply.usage or (prompt, completion)
        self.id = f"msg_{uuid.uuid4().hex[:24]}"
        self.call_ids = [f"toolu_{uuid.uuid4().hex[:24]}" for _ in self.calls]
        self.stop = reply.finish or ("tool_use" if self.calls else "end_turn")

    def usage(self, output: int) -> dict[str, Any]:
        return {
            "input_tokens": self.input,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": self.reply.cached,
            "output_tokens": output,
        }

    def message(self) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if self.reply.thinking:
            content.append({"type": "thinking", "thinking": self.reply.thinking, "signature": "x"})
        if self.pieces:
            content.append({"type": "text", "text": "".join(self.pieces)})
        for call_id, call in zip(self.call_ids, self.calls, strict=True):
            content.append(
                {
                    "type": "tool_use",
                    "id": call_id,
                    "name": call["name"],
                    "input": json.loads(call["arguments"]),
                }
            )
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.body["model"],
            "content": content,
            "stop_reason": self.stop,
            "stop_sequence": None,
            "usage": {**self.usage(self.output), "service_tier": "standard"},
        }

    async def stream(self, request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
        resp = web.StreamResponse(
            status=200, headers={**headers, "Content-Type": "text/event-stream"}
        )
        await resp.prepare(request)
        reply = self.reply

        async def send(obj: dict[str, Any]) -> None:
            data = json.dumps(obj, separators=(",", ":"))
            await write(resp, f"event: {obj['type']}\ndata: {data}\n\n".encode(), reply)

        async def ping() -> None:
            if reply.pings:
                await write(resp, b'event: ping\ndata: {"type": "ping"}\n\n', reply)

        start = {k: v for k, v in self.message().items() if k != "content"}
        start.update(content=[], stop_reason=None, usage=self.usage(1))
        await send({"type": "message_start", "message": start})
        index = 0
        if reply.thinking:
            await send(_block_start(index, {"type": "thinking", "thinking": ""}))
            await send(_delta(index, {"type": "thinking_delta", "thinking": reply.thinking}))
            await send({"type": "content_block_stop", "index": index})
            index += 1
        if self.pieces:
            await send(_block_start(index, {"type": "text", "text": ""}))
            await ping()
            for n, piece in enumerate(self.pieces):
                if n == reply.inband_error_after:
                    await send(errors.stream_overloaded())
                    return resp
                if n == reply.cut_after:
                    return resp
                await send(_delta(index, {"type": "text_delta", "text": piece}))
            await send({"type": "content_block_stop", "index": index})
            index += 1
        elif reply.inband_error_after is not None:
            await send(errors.stream_overloaded())
            return resp
        for call_id, call in zip(self.call_ids, self.calls, strict=True):
            await ping()
            tool = {"type": "tool_use", "id": call_id, "name": call["name"], "input": {}}
            await send(_block_start(index, tool))
            args = call["arguments"]
            for fragment in ["", *(args[i : i + 7] for i in range(0, len(args), 7))]:
                await send(_delta(index, {"type": "input_json_delta", "partial_json": fragment}))
            await send({"type": "content_block_stop", "index": index})
            index += 1
        delta = {"stop_reason": self.stop, "stop_sequence": None}
        await send(
            {"type": "message_delta", "delta": delta, "usage": {"output_tokens": self.output}}
        )
        await send({"type": "message_stop"})
        return resp


def _block_start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def _delta(index: int, delta: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": delta}


class errors:
    """The recorded bodies of protocols.md §3.5."""

    @staticmethod
    def _body(type_: str, message: str) -> dict[str, Any]:
        return {
            "type": "error",
            "error": {"type": type_, "message": message},
            "request_id": "req_011CbrFTcXhtiMzr3s6EocF7",
        }

    @staticmethod
    def invalid_key() -> dict[str, Any]:
        return {
            "type": "error",
            "error": {"type": "authentication_error", "message": "invalid x-api-key"},
        }

    @staticmethod
    def invalid_request(message: str) -> dict[str, Any]:
        return errors._body("invalid_request_error", message)

    @staticmethod
    def rate_limit() -> dict[str, Any]:
        return errors._body(
            "rate_limit_error",
            "This request would exceed the rate limit for your organization (d3f27ff7-…) of "
            "40,000 input tokens per minute. For details, refer to: https://docs.anthropic.com/"
            "en/api/rate-limits. You can see the response headers for current usage. Please "
            "reduce the prompt length or the maximum tokens requested, or try again later.",
        )

    @staticmethod
    def credit_balance() -> dict[str, Any]:
        return errors.invalid_request(
            "Your credit balance is too low to access the Anthropic API. Please go to Plans & "
            "Billing to upgrade or purchase credits."
        )

    @staticmethod
    def usage_limit(day: str = "2026-02-01") -> dict[str, Any]:
        return errors.invalid_request(
            "You have reached your specified API usage limits. You will regain access on "
            f"{day} at 00:00 UTC."
        )

    @staticmethod
    def prompt_too_long() -> dict[str, Any]:
        return errors.invalid_request("prompt is too long: 208310 tokens > 200000 maximum")

    @staticmethod
    def overloaded() -> dict[str, Any]:
        return {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}

    @staticmethod
    def stream_overloaded() -> dict[str, Any]:
        return {
            "type": "error",
            "error": {"details": None, "type": "overloaded_error", "message": "Overloaded"},
            "request_id": "req_011Ce3HwQb6vtbs9LQVmh4oe",
        }
