"""The Responses door's answer pieces (SPEC §7a), shared by the whole answer and the stream: the
Response object around the output, the output items (`message`, `function_call`,
`custom_tool_call`), usage from chat usage, and the status a chat finish_reason means.

The Response echoes what the client asked for (instructions, max_output_tokens, tools, tool_choice,
text format, temperature and top_p, reasoning) with every field the SDK's `Response` declares
required; `store` is false, `previous_response_id` null and `truncation` "disabled" whatever was
sent, since this door is stateless. `metadata` is `{}` and `user` null: the response cache keys
bodies without them, so an answer must not depend on them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from relaygate.formats._responses_tools import ToolRef

_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def incomplete_reason(finish_reason: object) -> str | None:
    """The `incomplete_details.reason` a chat finish_reason means (None: the answer completed)."""
    return _INCOMPLETE.get(finish_reason) if isinstance(finish_reason, str) else None


def response(
    body: Mapping[str, Any], *, id_: str, created_at: int, model: object, status: str
) -> dict[str, Any]:
    """The Response around an answer: `output` empty and `usage` null until they are known."""
    reasoning, text = obj(body.get("reasoning")), obj(body.get("text"))
    fmt = obj(text.get("format")) or {"type": "text"}
    text_out: dict[str, Any] = {"format": fmt}
    if text.get("verbosity") is not None:
        text_out["verbosity"] = text["verbosity"]
    return {
        "id": id_,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": [],
        "parallel_tool_calls": _given(body, "parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": False,
        "temperature": _given(body, "temperature", 1.0),
        "text": text_out,
        "tool_choice": _given(body, "tool_choice", "auto"),
        "tools": _given(body, "tools", []),
        "top_p": _given(body, "top_p", 1.0),
        "truncation": "disabled",
        "usage": None,
        "user": None,
        "metadata": {},
    }


def obj(value: object) -> dict[str, Any]:
    """The value when it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def _given(body: Mapping[str, Any], key: str, default: Any) -> Any:
    value = body.get(key)
    return default if value is None else value


def finish(out: dict[str, Any], finish_reason: object) -> None:
    """Set the Response's status from the chat finish_reason."""
    reason = incomplete_reason(finish_reason)
    out["status"] = "completed" if reason is None else "incomplete"
    out["incomplete_details"] = None if reason is None else {"reason": reason}


def usage(chat: object) -> dict[str, Any]:
    """Chat usage -> Responses usage (zeros when the answer carried none)."""
    src = chat if isinstance(chat, Mapping) else {}
    prompt, completion = _int(src.get("prompt_tokens")), _int(src.get("completion_tokens"))
    cached = _int(obj(src.get("prompt_tokens_details")).get("cached_tokens"))
    reasoning = _int(obj(src.get("completion_tokens_details")).get("reasoning_tokens"))
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": _int(src.get("total_tokens")) or prompt + completion,
    }


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def part(kind: str, text: str) -> dict[str, Any]:
    """A message content part: `text` -> output_text, `refusal` -> refusal."""
    if kind == "refusal":
        return {"type": "refusal", "refusal": text}
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(id_: str, parts: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {"id": id_, "type": "message", "role": "assistant", "status": status, "content": parts}


def call_item(
    ref: ToolRef, *, id_: str, call_id: str, arguments: str, status: str
) -> dict[str, Any]:
    """A `function_call` item, or a `custom_tool_call` with its raw input for a custom tool."""
    item: dict[str, Any]
    if ref.custom:
        item = {
            "id": id_,
            "type": "custom_tool_call",
            "call_id": call_id,
            "name": ref.name,
            "input": custom_input(arguments),
        }
    else:
        item = {
            "id": id_,
            "type": "function_call",
            "call_id": call_id,
            "name": ref.name,
            "arguments": arguments,
            "status": status,
        }
    if ref.namespace is not None:
        item["namespace"] = ref.namespace
    return item


def custom_input(arguments: str) -> str:
    """The raw input of a custom tool call from the function arguments `{"input": <raw>}`; the
    arguments themselves when the model sent something else."""
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return arguments
    if isinstance(parsed, dict):
        raw = parsed.get("input")
        if isinstance(raw, str):
            return raw
        values = list(parsed.values())
        if len(values) == 1 and isinstance(values[0], str):
            return values[0]
    return arguments


def item_id_prefix(ref: ToolRef) -> str:
    return "ctc" if ref.custom else "fc"
