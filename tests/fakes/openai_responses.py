"""POST /v1/responses for the fake OpenAI upstream (protocols.md §11): a Response object, or its
documented event stream with `event:` lines and sequence numbers, for the scripted Reply (text,
or function calls). Used by the Responses door's passthrough tests. In a stream,
`inband_error_after=N` sends `response.failed` (status failed, `error: {code, message}`) after N
text deltas and ends, `cut_after=N` ends the body after N text deltas, unfinished, and
`chunk_delay_s` comes before each text delta."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from aiohttp import web


def _input_text(body: dict[str, Any]) -> str:
    given = body.get("input")
    if isinstance(given, str):
        return given
    for item in reversed(given or []):
        if isinstance(item, dict) and item.get("role") == "user":
            content = item.get("content")
            if isinstance(content, str):
                return content
            return " ".join(p.get("text", "") for p in content or [] if isinstance(p, dict))
    return ""


def _output(body: dict[str, Any], reply: Any) -> tuple[list[dict[str, Any]], list[str]]:
    text = reply.text if reply.text is not None else f"Echo: {_input_text(body)}"
    words = text.split(" ")
    pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
    if reply.tool_calls:
        items = [
            {
                "id": f"fc_{uuid.uuid4().hex[:16]}",
                "type": "function_call",
                "call_id": f"call_{uuid.uuid4().hex[:16]}",
                "name": call["name"],
                "arguments": call["arguments"],
                "status": "completed",
            }
            for call in reply.tool_calls
        ]
        return items, []
    message = {
        "id": f"msg_{uuid.uuid4().hex[:16]}",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }
    return [message], pieces


def _response(body: dict[str, Any], rid: str, status: str, output: list[Any], usage: Any) -> Any:
    return {
        "id": rid,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "model": body.get("model"),
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []),
        "usage": usage,
    }


async def answer(request: web.Request, body: dict[str, Any], reply: Any) -> web.StreamResponse:
    items, pieces = _output(body, reply)
    usage = {
        "input_tokens": 11,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": max(1, len(pieces)),
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 11 + max(1, len(pieces)),
    }
    rid = f"resp_{uuid.uuid4().hex}"
    if not body.get("stream"):
        return web.json_response(_response(body, rid, "completed", items, usage))
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await resp.prepare(request)
    seq = 0

    async def send(kind: str, **fields: Any) -> None:
        nonlocal seq
        data = json.dumps({"type": kind, "sequence_number": seq, **fields})
        seq += 1
        await resp.write(f"event: {kind}\ndata: {data}\n\n".encode())

    await send("response.created", response=_response(body, rid, "in_progress", [], None))
    await send("response.in_progress", response=_response(body, rid, "in_progress", [], None))
    for index, item in enumerate(items):
        if item["type"] == "message":
            start = {**item, "status": "in_progress", "content": []}
            await send("response.output_item.added", output_index=index, item=start)
            part = {"type": "output_text", "text": "", "annotations": []}
            ids = {"item_id": item["id"], "output_index": index, "content_index": 0}
            await send("response.content_part.added", **ids, part=part)
            for n, piece in enumerate(pieces):
                if n == reply.inband_error_after:
                    error = {"code": "server_error", "message": "The model failed mid-answer."}
                    failed = _response(body, rid, "failed", [], None)
                    await send("response.failed", response={**failed, "error": error})
                    return resp
                if n == reply.cut_after:
                    return resp
                if reply.chunk_delay_s:
                    await asyncio.sleep(reply.chunk_delay_s)
                await send("response.output_text.delta", **ids, delta=piece, logprobs=[])
            text = item["content"][0]["text"]
            await send("response.output_text.done", **ids, text=text, logprobs=[])
            await send("response.content_part.done", **ids, part={**part, "text": text})
        else:
            start = {**item, "arguments": "", "status": "in_progress"}
            await send("response.output_item.added", output_index=index, item=start)
            ids = {"item_id": item["id"], "output_index": index}
            await send("response.function_call_arguments.delta", **ids, delta=item["arguments"])
            await send("response.function_call_arguments.done", **ids, arguments=item["arguments"])
        await send("response.output_item.done", output_index=index, item=item)
    await send("response.completed", response=_response(body, rid, "completed", items, usage))
    return resp
