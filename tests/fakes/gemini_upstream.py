"""A fake Gemini API (generativelanguage v1beta) on a real socket, speaking protocols.md §4 exactly:
`x-goog-api-key` header or `key` query enforced, `models/{model}:generateContent` and
`:streamGenerateContent?alt=sse` (data-only SSE, LF or CRLF, running usage totals, the stream just
closes after the chunk with `finishReason`), `{"error": ...}` payloads mid-stream, and the recorded
google.rpc.Status bodies (see `errors`). Scriptable per key (tests.fakes._native.Reply)."""

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

ERROR_TYPE = "application/json; charset=UTF-8"


def _error(status: int, body: dict[str, Any] | str, headers: dict[str, str] | None = None):
    text = body if isinstance(body, str) else json.dumps(body, indent=2)
    return web.Response(
        status=status, text=text, headers={"Content-Type": ERROR_TYPE, **(headers or {})}
    )


def _last_user_text(body: dict[str, Any]) -> str:
    for content in reversed(body.get("contents") or []):
        if content.get("role") != "user":
            continue
        texts = [p["text"] for p in content.get("parts") or [] if "text" in p]
        if texts:
            return " ".join(texts)
    return ""


class FakeGemini(FakeUpstream):
    @property
    def base_url(self) -> str:
        return self.base + "/v1beta"

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1beta/models/{target}", self._generate)
        app.router.add_get("/v1beta/models", self._models)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        """`GET /v1beta/models` (protocols.md §4.1): names with `models/`, and their methods."""
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        with self._lock:
            self.listings.append(key)
        if not key:
            return _error(403, errors.unregistered())
        if key in self.bad_keys:
            return _error(400, errors.invalid_key())
        models = [
            {
                "name": f"models/{m}",
                "version": "001",
                "displayName": m,
                "supportedGenerationMethods": ["generateContent", "countTokens"],
            }
            for m in self.listed_models
        ]
        models.append(
            {"name": "models/text-embedding-004", "supportedGenerationMethods": ["embedContent"]}
        )
        return web.json_response({"models": models})

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        body = await read_json(request)
        self._record(request, key, body)
        model, _, method = request.match_info["target"].partition(":")
        if not key:
            return _error(403, errors.unregistered())
        if method == "countTokens":  # a stand-in count: the words of every text, plus 3
            return web.json_response({"totalTokens": count_words(body) + 3})
        if method in ("embedContent", "batchEmbedContents"):
            return await self._embed(key, method, model, body)
        if method not in ("generateContent", "streamGenerateContent"):
            return _error(404, errors.not_found(model))
        stream = method == "streamGenerateContent"
        if stream and request.query.get("alt") != "sse":
            return _error(400, errors.invalid_argument("fake: streams need ?alt=sse"))
        problem = _check(body)
        if problem:
            return _error(400, errors.invalid_argument(problem))
        reply = self._next(key)
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.status != 200:
            return _error(reply.status, reply.error or errors.overloaded(), reply.headers)
        answer = _Answer(body, reply, model)
        if stream:
            return await answer.stream(request)
        return web.json_response(answer.whole())

    async def _embed(self, key: str, method: str, model: str, body: Any) -> web.Response:
        from tests.fakes import embeddings

        reply = self._next(key)
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.status != 200:
            return _error(reply.status, reply.error or errors.overloaded(), reply.headers)
        status, answer = embeddings.gemini_answer(method, model, body)
        return _error(status, answer) if status != 200 else web.json_response(answer)


def _check(body: Any) -> str | None:
    """What the real API would refuse with a 400 (a mistranslation shows up here)."""
    if not isinstance(body, dict):
        return "Invalid JSON payload received."
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    for content in contents:
        if content.get("role") not in ("user", "model"):
            return f"Please use a valid role: user, model. Got {content.get('role')!r}."
        for part in content.get("parts") or []:
            response = part.get("functionResponse")
            if response is not None and not (
                response.get("name") and isinstance(response.get("response"), dict)
            ):
                return "* functionResponse: name and an object response are required"
    return None


class _Answer:
    def __init__(self, body: dict[str, Any], reply: Reply, model: str) -> None:
        self.reply, self.model = reply, model
        self.pieces = answer_pieces(reply, _last_user_text(body))
        self.calls = reply.tool_calls or []
        prompt = count_words(body.get("contents")) + count_words(body.get("systemInstruction"))
        completion = len(self.pieces) + 10 * len(self.calls)
        self.prompt, self.output = reply.usage or (prompt + 7, completion)
        self.thoughts = len(reply.thinking.split()) if reply.thinking else 0
        self.id = uuid.uuid4().hex[:22]

    def usage(self, output: int) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "promptTokenCount": self.prompt,
            "candidatesTokenCount": output,
            "totalTokenCount": self.prompt + output + self.thoughts,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": self.prompt}],
        }
        if self.thoughts:
            meta["thoughtsTokenCount"] = self.thoughts
        if self.reply.cached:
            meta["cachedContentTokenCount"] = self.reply.cached
        return meta

    def call_parts(self) -> list[dict[str, Any]]:
        return [
            {
                "functionCall": {"name": c["name"], "args": json.loads(c["arguments"])},
                "thoughtSignature": "CikBcsjafFK168Ib",
            }
            for c in self.calls
        ]

    def frame(self, parts: list[dict[str, Any]], output: int, finish: bool) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if finish:
            candidate["finishReason"] = self.reply.finish or "STOP"
        return {
            "candidates": [candidate],
            "usageMetadata": self.usage(output),
            "modelVersion": self.model,
            "responseId": self.id,
        }

    def whole(self) -> dict[str, Any]:
        parts: list[dict[str, Any]] = []
        if self.reply.thinking:
            parts.append({"text": self.reply.thinking, "thought": True})
        if self.pieces:
            parts.append({"text": "".join(self.pieces)})
        return self.frame(parts + self.call_parts(), self.output, finish=True)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        reply = self.reply
        nl = "\r\n" if reply.crlf else "\n"

        async def send(obj: dict[str, Any]) -> None:
            await write(resp, f"data: {json.dumps(obj)}{nl}{nl}".encode(), reply)

        if reply.thinking:
            await send(self.frame([{"text": reply.thinking, "thought": True}], 0, finish=False))
        for n, piece in enumerate(self.pieces):
            if n == reply.inband_error_after:
                await send(errors.overloaded())
                return resp
            if n == reply.cut_after:
                return resp
            last = n == len(self.pieces) - 1 and not self.calls
            output = self.output if last else n + 1
            await send(self.frame([{"text": piece}], output, finish=last))
        if not self.pieces and reply.inband_error_after is not None:
            await send(errors.overloaded())
            return resp
        if self.calls or not self.pieces:  # a function call arrives whole, in one chunk
            await send(self.frame(self.call_parts(), self.output, finish=True))
        return resp  # no terminator: the body just ends


class errors:
    """The recorded google.rpc.Status bodies of protocols.md §4.5."""

    @staticmethod
    def invalid_key() -> dict[str, Any]:
        message = "API key not valid. Please pass a valid API key."
        return {
            "error": {
                "code": 400,
                "message": message,
                "status": "INVALID_ARGUMENT",
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    },
                    {
                        "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                        "locale": "en-US",
                        "message": message,
                    },
                ],
            }
        }

    @staticmethod
    def invalid_argument(message: str) -> dict[str, Any]:
        return {"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}}

    @staticmethod
    def unregistered() -> dict[str, Any]:
        return {
            "error": {
                "code": 403,
                "message": "Method doesn't allow unregistered callers (callers without "
                "established identity). Please use API Key or other form of API consumer "
                "identity to call this API.",
                "status": "PERMISSION_DENIED",
            }
        }

    @staticmethod
    def not_found(model: str) -> dict[str, Any]:
        return {
            "error": {
                "code": 404,
                "message": f"models/{model} is not found for API version v1beta, or is not "
                "supported for generateContent. Call ListModels to see the list of available "
                "models and their supported methods.",
                "status": "NOT_FOUND",
            }
        }

    @staticmethod
    def _quota(violations: list[dict[str, Any]], delay: str) -> dict[str, Any]:
        return {
            "error": {
                "code": 429,
                "message": "You exceeded your current quota, please check your plan and "
                "billing details. For more information on this error, head to: "
                "https://ai.google.dev/gemini-api/docs/rate-limits.",
                "status": "RESOURCE_EXHAUSTED",
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                        "violations": violations,
                    },
                    {
                        "@type": "type.googleapis.com/google.rpc.Help",
                        "links": [
                            {
                                "description": "Learn more about Gemini API quotas",
                                "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                            }
                        ],
                    },
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay},
                ],
            }
        }

    @staticmethod
    def per_minute(delay: str = "26s") -> dict[str, Any]:
        metric = "generativelanguage.googleapis.com/generate_content_free_tier_input_token_count"
        violation = {
            "quotaMetric": metric,
            "quotaId": "GenerateContentInputTokensPerModelPerMinute-FreeTier",
            "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
            "quotaValue": "250000",
        }
        return errors._quota([violation], delay)

    @staticmethod
    def per_day() -> dict[str, Any]:
        metric = "generativelanguage.googleapis.com/generate_content_free_tier_requests"
        dims = {"location": "global", "model": "gemini-2.0-flash"}
        return errors._quota(
            [
                {
                    "quotaMetric": metric,
                    "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                    "quotaDimensions": dims,
                },
                {
                    "quotaMetric": metric,
                    "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                    "quotaDimensions": dims,
                },
            ],
            "47s",
        )

    @staticmethod
    def overloaded() -> dict[str, Any]:
        return {
            "error": {
                "code": 503,
                "message": "The model is overloaded. Please try again later.",
                "status": "UNAVAILABLE",
            }
        }

    @staticmethod
    def too_many_tokens() -> dict[str, Any]:
        return errors.invalid_argument(
            "The input token count (1200293) exceeds the maximum number of tokens allowed "
            "(1048576)."
        )
