"""The Responses door's input (SPEC §7a): `instructions` and `input` turned into chat messages.

- `instructions` -> a leading system message; `input` as a string -> one user message.
- Messages (easy or typed): user parts `input_text` -> text, `input_image` (https or data: URL)
  -> image_url with its detail, `input_file` with `file_data` -> a chat file part; system and
  developer messages -> one system message of their text (developer is sent as system, which every
  target accepts); assistant messages (output_text / refusal parts) -> assistant text.
- `function_call` and `custom_tool_call` items -> assistant `tool_calls` (their `call_id` kept as
  the tool call id; consecutive calls, and calls right after an assistant message, share one
  assistant message); a custom call's raw input goes as the arguments `{"input": <raw>}`.
- `function_call_output` / `custom_tool_call_output` -> tool messages (a list output gives its text
  parts, joined; images in tool outputs are not carried).
- `reasoning` items and item types this door does not know are skipped; `item_reference` needs
  stored state and is a 400."""

from __future__ import annotations

from typing import Any

import orjson

from relaygate.errors import InvalidRequest
from relaygate.formats._responses_tools import ToolMap
from relaygate.formats.base import Untranslatable

_TEXT_PARTS = ("input_text", "output_text", "text")
_DETAILS = ("auto", "low", "high")


def chat_messages(body: dict[str, Any], names: ToolMap) -> list[dict[str, Any]]:
    builder = _Messages(names)
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        if instructions:
            builder.out.append({"role": "system", "content": instructions})
    elif isinstance(instructions, list):
        builder.items(instructions, "instructions")
    elif instructions is not None:
        raise InvalidRequest("'instructions' must be a string.", param="instructions")
    given = body.get("input")
    if isinstance(given, str):
        builder.out.append({"role": "user", "content": given})
    elif isinstance(given, list):
        builder.items(given, "input")
    elif given is None:
        raise InvalidRequest(
            "'input' is required: a string or an array of input items.", param="input"
        )
    else:
        raise InvalidRequest("'input' must be a string or an array of input items.", param="input")
    if not builder.out:
        raise InvalidRequest("'input' must hold at least one message.", param="input")
    return builder.out


class _Messages:
    __slots__ = ("names", "out")

    def __init__(self, names: ToolMap) -> None:
        self.names = names
        self.out: list[dict[str, Any]] = []

    def items(self, items: list[Any], field: str) -> None:
        for i, item in enumerate(items):
            where = f"{field}[{i}]"
            if not isinstance(item, dict):
                raise InvalidRequest(f"'{where}' must be an object.", param=where)
            kind = item.get("type")
            if kind is None or kind == "message":
                self._message(item, where)
            elif kind == "function_call":
                name = self.names.flat(_text(item, "name", where), _namespace(item, where))
                arguments = item.get("arguments")
                if arguments is None or arguments == "":
                    arguments = "{}"
                if not isinstance(arguments, str):
                    raise InvalidRequest(
                        f"'{where}.arguments' must be a string of JSON.", param=f"{where}.arguments"
                    )
                self._call(_text(item, "call_id", where), name, arguments)
            elif kind == "custom_tool_call":
                name = self.names.flat(_text(item, "name", where), _namespace(item, where))
                raw = item.get("input")
                if not isinstance(raw, str):
                    raise InvalidRequest(
                        f"'{where}.input' must be a string.", param=f"{where}.input"
                    )
                arguments = orjson.dumps({"input": raw}).decode()
                self._call(_text(item, "call_id", where), name, arguments)
            elif kind in ("function_call_output", "custom_tool_call_output"):
                output = _output(item.get("output"), f"{where}.output")
                call_id = _text(item, "call_id", where)
                self.out.append({"role": "tool", "tool_call_id": call_id, "content": output})
            elif kind == "item_reference":
                raise InvalidRequest(
                    f"'{where}' is an item_reference: this gateway is stateless and keeps no "
                    "items; send the item itself in 'input'.",
                    param=where,
                )
            elif not isinstance(kind, str):
                raise InvalidRequest(f"'{where}.type' must be a string.", param=f"{where}.type")
            # reasoning (opaque outside the provider that made it) and unknown items: skipped

    def _call(self, call_id: str, name: str, arguments: str) -> None:
        call = {
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }
        last = self.out[-1] if self.out else None
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)
        else:
            self.out.append({"role": "assistant", "content": None, "tool_calls": [call]})

    def _message(self, item: dict[str, Any], where: str) -> None:
        role = item.get("role")
        content = item.get("content")
        if not isinstance(content, str | list):
            raise InvalidRequest(
                f"'{where}.content' must be a string or an array of parts.",
                param=f"{where}.content",
            )
        if role == "user":
            parts = content if isinstance(content, str) else _user_parts(content, where)
            self.out.append({"role": "user", "content": parts})
        elif role in ("system", "developer"):
            self.out.append({"role": "system", "content": _joined(content, where, "\n\n")})
        elif role == "assistant":
            text = _joined(content, where, "")
            if text:  # an empty replayed turn says nothing and some targets refuse it
                self.out.append({"role": "assistant", "content": text})
        else:
            raise InvalidRequest(
                f"'{where}.role' must be one of 'user', 'assistant', 'system', 'developer'.",
                param=f"{where}.role",
            )


def _user_parts(parts: list[Any], where: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for j, part in enumerate(parts):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(part, dict) or not isinstance(kind, str):
            raise InvalidRequest(f"'{at}' must be an object with a 'type'.", param=at)
        if kind in _TEXT_PARTS:
            out.append({"type": "text", "text": _text(part, "text", at, empty=True)})
        elif kind == "input_image":
            out.append(_image(part, at))
        elif kind == "input_file":
            data = part.get("file_data")
            if not isinstance(data, str) or not data:
                raise Untranslatable(
                    f"'{at}' needs 'file_data': this gateway keeps no files, so 'file_id' and "
                    "'file_url' cannot be read.",
                    param=at,
                )
            file: dict[str, Any] = {"file_data": data}
            if isinstance(part.get("filename"), str):
                file["filename"] = part["filename"]
            out.append({"type": "file", "file": file})
        else:
            raise InvalidRequest(f"'{at}.type' '{kind}' is not a user content part.", param=at)
    return out


def _image(part: dict[str, Any], at: str) -> dict[str, Any]:
    url = part.get("image_url")
    if not isinstance(url, str) or not url:
        raise Untranslatable(
            f"'{at}' needs 'image_url' (an https or data: URL): this gateway keeps no files, so "
            "'file_id' cannot be read.",
            param=at,
        )
    image: dict[str, Any] = {"url": url}
    detail = part.get("detail")
    if detail in _DETAILS:
        image["detail"] = detail
    elif detail == "original":
        image["detail"] = "high"
    return {"type": "image_url", "image_url": image}


def _joined(content: str | list[Any], where: str, sep: str) -> str:
    """A system or assistant message's text: text, output_text and refusal parts."""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(part, dict) or not isinstance(kind, str):
            raise InvalidRequest(f"'{at}' must be an object with a 'type'.", param=at)
        if kind in _TEXT_PARTS:
            texts.append(_text(part, "text", at, empty=True))
        elif kind == "refusal":
            texts.append(_text(part, "refusal", at, empty=True))
        else:
            raise InvalidRequest(f"'{at}.type' '{kind}' cannot be sent in this message.", param=at)
    return sep.join(texts)


def _output(output: object, where: str) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        texts = [
            part["text"]
            for part in output
            if isinstance(part, dict)
            and part.get("type") in _TEXT_PARTS
            and isinstance(part.get("text"), str)
        ]
        return "\n".join(texts)
    raise InvalidRequest(f"'{where}' must be a string or an array of parts.", param=where)


def _namespace(item: dict[str, Any], where: str) -> str | None:
    namespace = item.get("namespace")
    if namespace is None or (isinstance(namespace, str) and namespace):
        return namespace
    raise InvalidRequest(f"'{where}.namespace' must be a string.", param=f"{where}.namespace")


def _text(item: dict[str, Any], key: str, where: str, *, empty: bool = False) -> str:
    value = item.get(key)
    if not isinstance(value, str) or (not value and not empty):
        what = "a string" if empty else "a non-empty string"
        raise InvalidRequest(f"'{where}.{key}' must be {what}.", param=f"{where}.{key}")
    return value
