"""The Anthropic Messages front door (SPEC §7a, protocols.md §3 and §12): `POST /v1/messages` and
its `count_tokens`. It owns the request side (a Messages body -> the core's chat body, checked
field by field) and the door itself; answers, streams and error types are in `_anthropic_stream`.

Translation choices a reviewer should know:
- `system` blocks become one leading system message, joined by blank lines; a Claude Code billing
  block (`x-anthropic-billing-header: ...`, new on every request) is left out, as it is no prompt
  and would defeat an upstream's prefix cache.
- A user turn's `tool_result` blocks become `tool` messages placed before the rest of the turn;
  their text is the tool message, and images they carry join the user message that follows.
- `thinking` blocks of past turns are dropped; `document` and unknown blocks are a 400.
- Server tools (a `type` other than `custom`) are dropped; `top_k`, `metadata`, `thinking`,
  `cache_control` and the other Anthropic-only fields are not sent on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

import orjson

from relaygate.chat_fields import check_model
from relaygate.errors import InvalidRequest, RelaygateError
from relaygate.formats._anthropic_stream import (
    AnthropicStream,
    render_message,
    status_error_type,
    stream_error_event,
)
from relaygate.formats.base import Door, DoorStream, Untranslatable

BILLING_PREFIX = "x-anthropic-billing-header:"
_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
_DROPPED = frozenset({"thinking", "redacted_thinking"})


class AnthropicMessages(Door):
    name = "anthropic_messages"
    route = "/v1/messages"
    # what an Anthropic upstream needs of the client's headers when the body passes through
    # (providers/_anthropic_native.py filters the beta list)
    native_headers = ("anthropic-version", "anthropic-beta")
    output_limit_field = ("max_tokens",)  # a passed-through body reserves by its own limit

    def chat_body(self) -> dict[str, Any]:
        body = self.body
        max_tokens = body.get("max_tokens")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            _invalid("'max_tokens' is required and must be a positive integer.", "max_tokens")
        stream = body.get("stream")
        if stream is not None and not isinstance(stream, bool):
            _invalid("'stream' must be a boolean.", "stream")
        out = _conversation(body, self.model)
        out["max_tokens"] = max_tokens
        for name in ("temperature", "top_p"):
            value = body.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                _invalid(f"'{name}' must be a number.", name)
            out[name] = value
        stop = body.get("stop_sequences")
        if stop is not None:
            if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
                _invalid("'stop_sequences' must be an array of strings.", "stop_sequences")
            if stop:
                out["stop"] = stop
        if self.stream:
            out["stream"] = True
            out["stream_options"] = {"include_usage": True}
        return out

    def render(self, completion: Mapping[str, Any]) -> bytes:
        return render_message(
            completion, message_id=self.new_id("msg"), model=self.model, tool_id=self._tool_id
        )

    def streamer(self) -> DoorStream:
        return AnthropicStream(
            message_id=self.new_id("msg"), model=self.model, tool_id=self._tool_id
        )

    @classmethod
    def error_body(cls, error: RelaygateError, message: str) -> bytes:
        return orjson.dumps(
            {
                "type": "error",
                "error": {"type": status_error_type(error.status), "message": message},
            }
        )

    @classmethod
    def stream_error(cls, error: Mapping[str, Any]) -> bytes:
        """A passed-through stream that failed: Anthropic's `event: error` (the SDK drops an
        event without its `event:` line, so the default `data:` event would go unseen)."""
        return stream_error_event(error)

    def _tool_id(self, n: int) -> str:
        """An id for the n-th tool call when the upstream gave none."""
        return self.new_id("toolu", n)


DOOR = AnthropicMessages


def count_tokens_body(input_tokens: int) -> bytes:
    """The answer of `POST /v1/messages/count_tokens`."""
    return orjson.dumps({"input_tokens": input_tokens})


def count_tokens_chat(body: Mapping[str, Any]) -> dict[str, Any]:
    """A count_tokens request checked (model, system, messages, tools, tool_choice; no
    max_tokens) and translated: the chat body whose size the handler estimates."""
    if not isinstance(body, Mapping):
        _invalid("The request body must be a JSON object.", None)
    return _conversation(body, body.get("model"))


def _conversation(body: Mapping[str, Any], model: Any) -> dict[str, Any]:
    """What a Messages request and a count_tokens request share: model, messages, tools."""
    check_model(model)
    out: dict[str, Any] = {} if model is None else {"model": model}
    out["messages"] = _system(body.get("system")) + _messages(body.get("messages"))
    tools = _tools(body.get("tools"))
    names = {tool["function"]["name"] for tool in tools}
    choice = _tool_choice(body.get("tool_choice"), names)
    if tools:
        out["tools"] = tools
        out.update(choice)
    return out


def _system(system: Any) -> list[dict[str, Any]]:
    if system is None:
        return []
    if isinstance(system, str):
        texts = [system]
    elif isinstance(system, list):
        texts = []
        for i, block in enumerate(system):
            if not (
                isinstance(block, dict)
                and block.get("type") == "text"
                and isinstance(block.get("text"), str)
            ):
                _invalid(f"'system[{i}]' must be a text block.", "system")
            if not block["text"].startswith(BILLING_PREFIX):
                texts.append(block["text"])
    else:
        _invalid("'system' must be a string or an array of text blocks.", "system")
    text = "\n\n".join(t for t in texts if t)
    return [{"role": "system", "content": text}] if text else []


def _messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        _invalid("'messages' must be a non-empty array.", "messages")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            _invalid(f"'{where}' must be an object.", "messages")
        role, content = message.get("role"), message.get("content")
        if role not in ("user", "assistant"):
            _invalid(f"'{where}.role' must be 'user' or 'assistant'.", "messages")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            _invalid(f"'{where}.content' must be a string or an array of blocks.", "messages")
        for j, block in enumerate(content):
            if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                _invalid(f"'{where}.content[{j}]' must be a block with a 'type'.", "messages")
        out += _user(content, where) if role == "user" else _assistant(content, where)
    return out


def _user(blocks: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """Tool results first (OpenAI wants them right after the assistant's calls), then the rest of
    the turn as one user message, images from the tool results leading."""
    tools: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        at, kind = f"{where}.content[{j}]", block["type"]
        if kind == "tool_result":
            call_id = block.get("tool_use_id")
            if not isinstance(call_id, str) or not call_id:
                _invalid(f"'{at}.tool_use_id' must be a non-empty string.", "messages")
            text, found = _tool_result(block.get("content"), at)
            tools.append({"role": "tool", "tool_call_id": call_id, "content": text})
            images += found
        elif kind == "text":
            parts.append(_text_part(block, at))
        elif kind == "image":
            parts.append(_image_part(block, at))
        elif kind not in _DROPPED:
            _unsupported(kind, at)
    rest = images + parts
    return tools + ([{"role": "user", "content": rest}] if rest else [])


def _tool_result(content: Any, at: str) -> tuple[str, list[dict[str, Any]]]:
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        _invalid(f"'{at}.content' must be a string or an array of blocks.", "messages")
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    for k, block in enumerate(content):
        inner = f"{at}.content[{k}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(_text_part(block, inner)["text"])
        elif kind == "image":
            images.append(_image_part(block, inner))
        else:
            _unsupported(kind, inner)
    return "\n".join(texts), images


def _assistant(blocks: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        at, kind = f"{where}.content[{j}]", block["type"]
        if kind == "text":
            texts.append(_text_part(block, at)["text"])
        elif kind == "tool_use":
            call_id, name, args = block.get("id"), block.get("name"), block.get("input")
            if not isinstance(call_id, str) or not isinstance(name, str):
                _invalid(f"'{at}' needs a string 'id' and 'name'.", "messages")
            if not isinstance(args, dict):
                _invalid(f"'{at}.input' must be an object.", "messages")
            function = {"name": name, "arguments": orjson.dumps(args).decode()}
            calls.append({"id": call_id, "type": "function", "function": function})
        elif kind not in _DROPPED:
            _unsupported(kind, at)
    text = "\n\n".join(t for t in texts if t)
    if not calls:
        return [{"role": "assistant", "content": text}] if texts else []
    return [{"role": "assistant", "content": text or None, "tool_calls": calls}]


def _text_part(block: Mapping[str, Any], at: str) -> dict[str, Any]:
    text = block.get("text")
    if not isinstance(text, str):
        _invalid(f"'{at}.text' must be a string.", "messages")
    return {"type": "text", "text": text}


def _image_part(block: Mapping[str, Any], at: str) -> dict[str, Any]:
    source = block.get("source")
    source = source if isinstance(source, dict) else {}
    kind = source.get("type")
    if kind == "base64":
        media, data = source.get("media_type"), source.get("data")
        if isinstance(media, str) and isinstance(data, str):
            return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    elif kind == "url":
        url = source.get("url")
        if isinstance(url, str) and url:
            return {"type": "image_url", "image_url": {"url": url}}
    _invalid(
        f"'{at}.source' must be a base64 source (media_type, data) or a url source.", "messages"
    )


def _tools(tools: Any) -> list[dict[str, Any]]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        _invalid("'tools' must be an array.", "tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            _invalid(f"'tools[{i}]' must be an object.", "tools")
        if tool.get("type") not in (None, "custom"):
            continue  # a server tool (web search, code execution...): only Anthropic runs it
        name, schema, about = tool.get("name"), tool.get("input_schema"), tool.get("description")
        if not isinstance(name, str) or not name:
            _invalid(f"'tools[{i}].name' must be a non-empty string.", "tools")
        if not isinstance(schema, dict):
            _invalid(f"'tools[{i}].input_schema' must be an object.", "tools")
        function: dict[str, Any] = {"name": name}
        if isinstance(about, str) and about:
            function["description"] = about
        function["parameters"] = schema
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any, names: set[str]) -> dict[str, Any]:
    if choice is None:
        return {}
    if not isinstance(choice, dict):
        _invalid("'tool_choice' must be an object.", "tool_choice")
    kind = choice.get("type")
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            _invalid("'tool_choice.name' must name a custom tool of 'tools'.", "tool_choice")
        if name not in names:  # a server tool (dropped for targets that do not run them)
            raise Untranslatable(
                f"'tool_choice' forces the tool {name!r}, which this model cannot run.",
                param="tool_choice",
            )
        out: dict[str, Any] = {"tool_choice": {"type": "function", "function": {"name": name}}}
    elif isinstance(kind, str) and kind in _TOOL_CHOICES:
        out = {"tool_choice": _TOOL_CHOICES[kind]}
    else:
        _invalid("'tool_choice.type' must be 'auto', 'any', 'tool' or 'none'.", "tool_choice")
    single = choice.get("disable_parallel_tool_use")
    if single is not None and not isinstance(single, bool):
        _invalid("'tool_choice.disable_parallel_tool_use' must be a boolean.", "tool_choice")
    if single:
        out["parallel_tool_calls"] = False
    return out


def _unsupported(kind: Any, at: str) -> NoReturn:
    """A block Anthropic knows that the chat format cannot say (an Anthropic target still takes
    the body as it came)."""
    raise Untranslatable(
        f"'{at}': blocks of type {kind!r} cannot be sent to this model.", param="messages"
    )


def _invalid(message: str, param: str | None) -> NoReturn:
    raise InvalidRequest(message, param=param)
