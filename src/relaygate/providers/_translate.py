"""OpenAI chat request pieces that every native translation reads the same way: message parts,
data: URLs, tool calls and their ids, stop lists, token caps (protocols.md §8.1)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

import orjson

from relaygate.errors import InvalidRequest

# A tool call id may carry an opaque provider token the next turn must echo back (a thought
# signature): `<id>__sig__<token, base64url>`. Clients treat ids as opaque strings.
SIG_SEP = "__sig__"


def invalid(message: str, param: str | None = None) -> NoReturn:
    """The request cannot be translated for this provider: a 400 for the client, no retry."""
    raise InvalidRequest(message, param=param)


def messages_of(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    raw = body.get("messages")
    if not isinstance(raw, list):
        invalid("'messages' must be an array.", "messages")
    for i, message in enumerate(raw):
        if not isinstance(message, dict):
            invalid(f"messages[{i}] must be an object.", "messages")
    return raw


def parts(content: Any) -> list[dict[str, Any]]:
    """A message's content as a list of parts: a string is one text part, None is none."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [
            p if isinstance(p, dict) else {"type": "text", "text": str(p)}
            for p in content
            if p is not None
        ]
    return [{"type": "text", "text": str(content)}]


def text_of(content: Any, sep: str = "\n") -> str:
    """The text of a content value; non-text parts are left out."""
    texts = [str(p.get("text") or "") for p in parts(content) if p.get("type") in ("text", None)]
    return sep.join(t for t in texts if t)


def image_url(part: Mapping[str, Any]) -> str:
    raw = part.get("image_url")
    url = raw.get("url") if isinstance(raw, dict) else raw
    if not isinstance(url, str) or not url:
        invalid("An image_url part needs image_url.url.", "messages")
    return url


def data_url(url: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a `data:<mime>;base64,<data>` URL, else None."""
    if not url.startswith("data:"):
        return None
    head, sep, data = url[5:].partition(",")
    if not sep or not head.endswith(";base64"):
        invalid("Only base64 data: URLs are supported for images and files.", "messages")
    mime = head[: -len(";base64")].split(";")[0] or "application/octet-stream"
    return mime, data.strip()


def unsupported_part(kind: object, provider: str) -> NoReturn:
    invalid(f"Content parts of type {kind!r} are not supported by {provider}.", "messages")


def tool_arguments(raw: Any) -> dict[str, Any]:
    """A tool call's `arguments` (a JSON string in OpenAI's format) as an object."""
    if isinstance(raw, dict):
        return raw
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    try:
        value = orjson.loads(raw) if isinstance(raw, str | bytes) else raw
    except orjson.JSONDecodeError:
        invalid("tool_calls[].function.arguments must be a JSON object string.", "messages")
    if not isinstance(value, dict):
        invalid("tool_calls[].function.arguments must encode a JSON object.", "messages")
    return value


def tool_calls(message: Mapping[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(id, name, arguments) of each function tool call of an assistant message."""
    out = []
    for call in message.get("tool_calls") or ():
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            continue
        fn = call["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            invalid("tool_calls[].function.name is required.", "messages")
        out.append((str(call.get("id") or ""), name, tool_arguments(fn.get("arguments"))))
    return out


def tool_names(messages: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """tool_call_id -> function name, from every earlier assistant tool call."""
    return {
        call_id: name
        for m in messages
        if m.get("role") == "assistant"
        for call_id, name, _ in tool_calls(m)
        if call_id
    }


def tool_name_for(message: Mapping[str, Any], names: Mapping[str, str]) -> str:
    call_id = message.get("tool_call_id")
    name = names.get(str(call_id)) if call_id else None
    name = name or message.get("name")
    if not isinstance(name, str) or not name:
        invalid(
            f"The tool message with tool_call_id {call_id!r} answers no earlier tool call.",
            "messages",
        )
    return name


def split_signature(call_id: str) -> tuple[str, str | None]:
    """An id made by `with_signature` -> (plain id, standard base64 token)."""
    plain, sep, token = call_id.partition(SIG_SEP)
    if not sep or not token:
        return call_id, None
    padded = token.replace("-", "+").replace("_", "/") + "=" * (-len(token) % 4)
    try:
        base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return call_id, None
    return plain, padded


def with_signature(call_id: str, token: str | None) -> str:
    if not token:
        return call_id
    return call_id + SIG_SEP + token.replace("+", "-").replace("/", "_").rstrip("=")


def functions(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The `function` objects of the request's function tools."""
    out = []
    for tool in body.get("tools") or ():
        if (
            isinstance(tool, dict)
            and isinstance(tool.get("function"), dict)
            and tool.get("type", "function") == "function"
        ):
            out.append(tool["function"])
    return out


def declarations(body: Mapping[str, Any], schema_key: str) -> list[dict[str, Any]]:
    """Function tools as `{name, description?, <schema_key>: parameters}` declarations."""
    out = []
    for fn in functions(body):
        decl: dict[str, Any] = {"name": fn.get("name")}
        if fn.get("description"):
            decl["description"] = fn["description"]
        if isinstance(fn.get("parameters"), dict):
            decl[schema_key] = fn["parameters"]
        out.append(decl)
    return out


def tool_choice(body: Mapping[str, Any]) -> str | tuple[str, str] | None:
    """None, "auto", "none", "required", or ("function", name)."""
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        return choice if choice in ("auto", "none", "required") else None
    if isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if isinstance(name, str) and name:
            return ("function", name)
    return None


def number(body: Mapping[str, Any], key: str) -> float | int | None:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def max_tokens(body: Mapping[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = number(body, key)
        if value is not None and value > 0:
            return int(value)
    return None


def stop_list(body: Mapping[str, Any]) -> list[str] | None:
    stop = body.get("stop")
    if isinstance(stop, str):
        return [stop] if stop else None
    if isinstance(stop, list):
        found = [s for s in stop if isinstance(s, str) and s]
        return found or None
    return None


def single_choice(body: Mapping[str, Any], provider: str) -> None:
    n = number(body, "n")
    if n is not None and n != 1:
        invalid(f"{provider} answers one choice per request: 'n' must be 1.", "n")


def response_format(body: Mapping[str, Any]) -> tuple[str, dict[str, Any] | None] | None:
    """("json_object", None) or ("json_schema", schema) or None for plain text."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict):
        return None
    kind = fmt.get("type")
    if kind == "json_object":
        return "json_object", None
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return "json_schema", schema if isinstance(schema, dict) else None
    return None


def json_object(text: str) -> dict[str, Any]:
    """A tool result as an object: JSON objects as they are, anything else under `result`."""
    try:
        value = orjson.loads(text) if text else text
    except orjson.JSONDecodeError:
        return {"result": text}
    return value if isinstance(value, dict) else {"result": value}
