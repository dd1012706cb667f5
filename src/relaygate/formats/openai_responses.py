"""The OpenAI Responses door, `POST /v1/responses` (SPEC §7a, protocols.md §11), stateless: a
Responses request becomes one chat body for the core, and the core's answer, stream and errors
come back as a Response object, Responses stream events and OpenAI-shaped errors.

What the chat body carries: the messages (formats/_responses_input.py), the tools and tool_choice
(formats/_responses_tools.py), `parallel_tool_calls` (with tools), `temperature`, `top_p`,
`max_output_tokens` as `max_completion_tokens`, `text.format` as `response_format`, and for a
stream `stream_options.include_usage`. Dropped, since no target behind the chat core takes them or
they only make sense with server state: `reasoning`, `store` (always false here), `include`,
`prompt_cache_key`, `metadata`, `user`, `safety_identifier`, `service_tier`, `truncation`,
`stream_options`, `text.verbosity`, `background`, `max_tool_calls`, `top_logprobs`.
`previous_response_id`, `conversation` and `prompt` name stored state and are a 400.

The whole answer is built here; the stream is formats/_responses_stream.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from relaygate.errors import InvalidRequest
from relaygate.formats import _responses_output as out
from relaygate.formats._responses_input import chat_messages
from relaygate.formats._responses_stream import ResponsesStream
from relaygate.formats._responses_tools import ToolMap, chat_tool_choice, chat_tools
from relaygate.formats.base import Door, DoorStream

_NUMBERS = ("temperature", "top_p")
_STATELESS = (
    "This gateway is stateless and keeps no responses: send the whole conversation in 'input' "
    "instead of '{field}'."
)


class OpenAIResponses(Door):
    name = "openai_responses"
    route = "/v1/responses"
    output_limit_field = ("max_output_tokens",)  # a passed-through body reserves by its own limit

    _tool_map: tuple[ToolMap, list[dict[str, Any]]] | None = None

    def _tools(self) -> tuple[ToolMap, list[dict[str, Any]]]:
        if self._tool_map is None:
            self._tool_map = chat_tools(self.body.get("tools"))
        return self._tool_map

    def chat_body(self) -> dict[str, Any]:
        body = self.body
        _refuse_state(body)
        names, tools = self._tools()
        chat: dict[str, Any] = {}
        if self.model is not None:
            chat["model"] = self.model
        chat["messages"] = chat_messages(body, names)
        if tools:
            chat["tools"] = tools
            parallel = body.get("parallel_tool_calls")
            if parallel is not None:
                if not isinstance(parallel, bool):
                    raise InvalidRequest(
                        "'parallel_tool_calls' must be a boolean.", param="parallel_tool_calls"
                    )
                chat["parallel_tool_calls"] = parallel
        choice = chat_tool_choice(body.get("tool_choice"), names, has_tools=bool(tools))
        if choice is not None:
            chat["tool_choice"] = choice
        for key in _NUMBERS:
            value = body.get(key)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise InvalidRequest(f"'{key}' must be a number.", param=key)
                chat[key] = value
        limit = body.get("max_output_tokens")
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise InvalidRequest(
                    "'max_output_tokens' must be a positive integer.", param="max_output_tokens"
                )
            chat["max_completion_tokens"] = limit
        response_format = _response_format(body.get("text"))
        if response_format is not None:
            chat["response_format"] = response_format
        stream = body.get("stream")
        if stream is not None and not isinstance(stream, bool):
            raise InvalidRequest("'stream' must be a boolean.", param="stream")
        if self.stream:
            chat["stream"] = True
            chat["stream_options"] = {"include_usage": True}
        return chat

    def render(self, completion: Mapping[str, Any]) -> bytes:
        names, _ = self._tools()
        choices = completion.get("choices")
        first = out.obj(choices[0] if isinstance(choices, list) and choices else None)
        message = out.obj(first.get("message"))
        reason = first.get("finish_reason")
        items: list[dict[str, Any]] = []
        parts: list[dict[str, Any]] = []
        text = _content_text(message.get("content"))
        if text:
            parts.append(out.part("text", text))
        if isinstance(message.get("refusal"), str) and message["refusal"]:
            parts.append(out.part("refusal", message["refusal"]))
        if parts:
            items.append(out.message_item(self.new_id("msg", 0), parts, "completed"))
        calls = message.get("tool_calls")
        for call in calls if isinstance(calls, list) else []:
            if not isinstance(call, dict):
                continue
            function = out.obj(call.get("function"))
            ref = names.resolve(str(function.get("name") or ""))
            n = len(items)
            items.append(
                out.call_item(
                    ref,
                    id_=self.new_id(out.item_id_prefix(ref), n),
                    call_id=str(call.get("id") or self.new_id("call", n)),
                    arguments=str(function.get("arguments") or ("" if ref.custom else "{}")),
                    status="completed",
                )
            )
        answer = out.response(
            self.body,
            id_=self.new_id("resp"),
            created_at=completion.get("created") or 0,
            model=completion.get("model", self.model),
            status="completed",
        )
        out.finish(answer, reason)
        if answer["status"] == "incomplete" and items and "status" in items[-1]:
            items[-1]["status"] = "incomplete"
        answer["output"] = items
        answer["usage"] = out.usage(completion.get("usage"))
        return orjson.dumps(answer)

    def streamer(self) -> DoorStream:
        names, _ = self._tools()
        return ResponsesStream(self.body, names=names, new_id=self.new_id, model=self.model)


def _refuse_state(body: Mapping[str, Any]) -> None:
    if body.get("previous_response_id") is not None:
        raise InvalidRequest(
            _STATELESS.format(field="previous_response_id"),
            param="previous_response_id",
            code="previous_response_not_found",
        )
    for field in ("conversation", "prompt"):
        if body.get(field) is not None:
            raise InvalidRequest(_STATELESS.format(field=field), param=field)


def _response_format(text: object) -> dict[str, Any] | None:
    if text is None:
        return None
    if not isinstance(text, dict):
        raise InvalidRequest("'text' must be an object.", param="text")
    fmt = text.get("format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if not isinstance(fmt, dict) or kind not in ("text", "json_object", "json_schema"):
        raise InvalidRequest(
            "'text.format' must be an object of type 'text', 'json_object' or 'json_schema'.",
            param="text.format",
        )
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    name, schema = fmt.get("name"), fmt.get("schema")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(
            "'text.format.name' must be a non-empty string.", param="text.format.name"
        )
    if not isinstance(schema, dict):
        raise InvalidRequest("'text.format.schema' must be an object.", param="text.format.schema")
    spec: dict[str, Any] = {"name": name, "schema": schema}
    if isinstance(fmt.get("strict"), bool):
        spec["strict"] = fmt["strict"]
    if isinstance(fmt.get("description"), str):
        spec["description"] = fmt["description"]
    return {"type": "json_schema", "json_schema": spec}


def _content_text(content: object) -> str:
    """A chat message's content as text (a string, or text parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


DOOR = OpenAIResponses
