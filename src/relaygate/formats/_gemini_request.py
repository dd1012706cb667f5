"""The Gemini native door's request side (protocols.md §4.2, §13.2): a GenerateContentRequest
turned into the OpenAI chat messages, tools and sampling fields the core runs.

Field names are camelCase as Google sends them; the snake_case spelling of each is accepted too.
`contents` become messages in order: `user` turns (a missing role is `user`) give user messages
(text, and images as `image_url` parts), `model` turns give assistant messages (text and
`functionCall` parts as `tool_calls`), and `functionResponse` parts give `tool` messages placed
right after the assistant message whose call they answer. Thought parts are dropped. A part the
chat format cannot carry (code execution, non-image media) is a 400 naming it."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import orjson

from relaygate.errors import InvalidRequest
from relaygate.formats.base import Untranslatable

_SNAKE = re.compile(r"(?<!^)(?=[A-Z])")
_CAMEL = re.compile(r"_([a-z])")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".heic", ".heif", ".bmp")
# A part holds one of these (besides metadata such as thoughtSignature or videoMetadata).
_KINDS = (
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
)
_COUNTS = ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties")
_MAX_DEPTH = 64  # schema levels; deeper is a 400, never a RecursionError
CallId = Callable[[int], str]


def field(obj: Mapping[str, Any], name: str) -> Any:
    """`obj[name]` by its camelCase name, else by its snake_case alias."""
    value = obj.get(name)
    return obj.get(_SNAKE.sub("_", name).lower()) if value is None else value


def invalid(message: str, param: str) -> NoReturn:
    raise InvalidRequest(message, param=param)


def untranslatable(message: str, param: str) -> NoReturn:
    """Valid Gemini the chat format cannot say: a Gemini target still takes it as it came."""
    raise Untranslatable(message, param=param)


def as_object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        invalid(f"'{where}' must be an object.", where)
    return value


def as_list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        invalid(f"'{where}' must be an array.", where)
    return value


def as_str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        invalid(f"'{where}' must be a string.", where)
    return value


def compact(value: Any, where: str) -> str:
    """Compact JSON text of a value the client sent (too deep to write back is a 400)."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        invalid(f"'{where}' is nested too deeply.", where)


def system_text(value: Any) -> str:
    """`systemInstruction` (a Content, or a plain string) -> its text parts joined; the role it
    carries (the SDK sends `user`) is ignored."""
    where = "systemInstruction"
    if value is None or isinstance(value, str):
        return value or ""
    parts = as_list(field(as_object(value, where), "parts") or [], f"{where}.parts")
    texts = []
    for j, part in enumerate(parts):
        part = as_object(part, f"{where}.parts[{j}]")
        if part.get("thought") is True:
            continue
        texts.append(as_str(field(part, "text"), f"{where}.parts[{j}].text"))
    return "\n".join(t for t in texts if t)


class Turns:
    """`contents` -> chat messages. Each assistant message keeps the tool messages that answer
    it, so a `functionResponse` lands right after the call it answers wherever it was sent."""

    def __init__(self, call_id: CallId) -> None:
        self._call_id = call_id
        self._slots: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        self._answers: dict[str, list[dict[str, Any]]] = {}  # call id -> its tool messages
        self._pending: dict[str, list[str]] = {}  # name -> unanswered call ids, in order
        self._names: dict[str, str] = {}  # call id -> its function's name
        self._made = 0

    def messages(self) -> list[dict[str, Any]]:
        return [m for message, answers in self._slots for m in (message, *answers)]

    def add(self, content: Any, where: str) -> None:
        content = as_object(content, where)
        role = field(content, "role") or "user"
        parts = as_list(field(content, "parts") or [], f"{where}.parts")
        if role == "model":
            self._model(parts, where)
        elif role in ("user", "function"):
            self._user(parts, where)
        else:
            invalid(f"'{where}.role' must be 'user' or 'model', not {role!r}.", f"{where}.role")

    def _user(self, parts: list[Any], where: str) -> None:
        content: list[dict[str, Any]] = []
        for j, (kind, value) in _parts(parts, where):
            at = f"{where}.parts[{j}]"
            if kind == "text":
                content += [{"type": "text", "text": value}] if value else []
            elif kind in ("inlineData", "fileData"):
                content.append(_image(kind, value, f"{at}.{kind}"))
            elif kind == "functionResponse":
                self._answer(value, f"{at}.functionResponse")
            else:
                untranslatable(f"'{at}' ({kind}) cannot be sent in a user turn.", at)
        if len(content) == 1 and content[0]["type"] == "text":
            self._slots.append(({"role": "user", "content": content[0]["text"]}, []))
        elif content:
            self._slots.append(({"role": "user", "content": content}, []))

    def _model(self, parts: list[Any], where: str) -> None:
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for j, (kind, value) in _parts(parts, where):
            at = f"{where}.parts[{j}]"
            if kind == "text":
                texts.append(value)
            elif kind == "functionCall":
                calls.append(self._call(value, f"{at}.functionCall"))
            else:
                untranslatable(f"'{at}' ({kind}) cannot be sent in a model turn.", at)
        text = "".join(texts)
        if not text and not calls:
            return
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        answers: list[dict[str, Any]] = []
        if calls:
            message["tool_calls"] = calls
            for call in calls:
                self._answers[call["id"]] = answers
        self._slots.append((message, answers))

    def _call(self, value: Any, where: str) -> dict[str, Any]:
        call = as_object(value, where)
        name = as_str(field(call, "name"), f"{where}.name")
        args = as_object(field(call, "args") or {}, f"{where}.args")
        given = field(call, "id")
        if given is not None:
            call_id = as_str(given, f"{where}.id")
        else:
            call_id = self._call_id(self._made)
            self._made += 1
        self._pending.setdefault(name, []).append(call_id)
        self._names[call_id] = name
        arguments = compact(args, f"{where}.args")
        return {
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }

    def _answer(self, value: Any, where: str) -> None:
        answer = as_object(value, where)
        name = as_str(field(answer, "name"), f"{where}.name")
        response = as_object(field(answer, "response") or {}, f"{where}.response")
        given = field(answer, "id")
        if given is not None:
            call_id = as_str(given, f"{where}.id")
            if call_id not in self._answers:
                untranslatable(f"'{where}.id' {call_id!r} answers no earlier functionCall.", where)
            pending = self._pending.get(self._names[call_id], [])
            if call_id in pending:
                pending.remove(call_id)
        elif self._pending.get(name):
            call_id = self._pending[name].pop(0)
        else:
            untranslatable(f"'{where}' answers no earlier unanswered functionCall {name!r}.", where)
        content = compact(response, f"{where}.response")
        self._answers[call_id].append({"role": "tool", "tool_call_id": call_id, "content": content})


def _parts(parts: list[Any], where: str) -> list[tuple[int, tuple[str, Any]]]:
    """(index, (kind, value)) for each part that carries content; thought parts and parts with
    only metadata are skipped; code execution parts are a 400."""
    out = []
    for j, part in enumerate(parts):
        at = f"{where}.parts[{j}]"
        part = as_object(part, at)
        if part.get("thought") is True:
            continue
        found = next(((k, field(part, k)) for k in _KINDS if field(part, k) is not None), None)
        if found is None:
            continue
        kind, value = found
        if kind in ("executableCode", "codeExecutionResult"):
            untranslatable(f"'{at}': {kind} parts are not supported by this gateway.", at)
        if kind == "text":
            value = as_str(value, f"{at}.text")
        out.append((j, (kind, value)))
    return out


def _image(kind: str, value: Any, where: str) -> dict[str, Any]:
    """An inlineData (base64 image) or fileData (http(s) image URI) part -> an image_url part."""
    media = as_object(value, where)
    mime = field(media, "mimeType")
    mime = as_str(mime, f"{where}.mimeType") if mime is not None else ""
    if kind == "inlineData":
        data = as_str(field(media, "data"), f"{where}.data")
        if not mime.startswith("image/"):
            untranslatable(
                f"'{where}': only images can be sent inline, not {mime or 'no type'!r}.", where
            )
        # the SDK encodes bytes URL-safe; a data: URL wants the standard alphabet
        url = f"data:{mime};base64,{data.replace('-', '+').replace('_', '/')}"
    else:
        url = as_str(field(media, "fileUri"), f"{where}.fileUri")
        looks_image = url.split("?")[0].lower().endswith(_IMAGE_SUFFIXES)
        if not url.startswith(("https://", "http://")) or not (
            mime.startswith("image/") or (not mime and looks_image)
        ):
            untranslatable(f"'{where}': only http(s) image URIs can be sent as fileData.", where)
    return {"type": "image_url", "image_url": {"url": url}}


def json_schema(schema: Any, where: str, depth: int = 0) -> dict[str, Any]:
    """Gemini's OpenAPI-subset Schema (upper-case types, `nullable`, `propertyOrdering`) -> JSON
    Schema; keywords it does not know pass as they are."""
    schema = as_object(schema, where)
    if depth > _MAX_DEPTH:
        invalid(f"'{where}' is nested too deeply.", where)
    depth += 1
    out: dict[str, Any] = {}
    nullable = False
    for raw_key, value in schema.items():
        key = _CAMEL.sub(lambda m: m.group(1).upper(), raw_key)
        if key == "type" and isinstance(value, list):
            out[key] = [as_str(k, f"{where}.type").lower() for k in value]
        elif key == "type":
            kind = as_str(value, f"{where}.type").lower()
            if kind != "type_unspecified":
                out[key] = kind
        elif key == "nullable":
            nullable = value is True
        elif key == "properties":
            props = as_object(value, f"{where}.properties")
            out[key] = {
                n: json_schema(s, f"{where}.properties.{n}", depth) for n, s in props.items()
            }
        elif key == "items":
            out[key] = json_schema(value, f"{where}.items", depth)
        elif key == "anyOf":
            items = as_list(value, f"{where}.anyOf")
            out[key] = [json_schema(s, f"{where}.anyOf[{i}]", depth) for i, s in enumerate(items)]
        elif key == "propertyOrdering" or (key == "format" and value == "enum"):
            continue
        elif key in _COUNTS and isinstance(value, str) and value.isdigit():
            out[key] = int(value)  # int64 fields arrive as strings in protobuf JSON
        else:
            out[key] = value
    if nullable and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    elif nullable and "anyOf" in out:
        out["anyOf"].append({"type": "null"})
    return out
