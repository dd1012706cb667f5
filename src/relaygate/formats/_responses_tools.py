"""The Responses door's tools (SPEC §7a): a Responses `tools` list and `tool_choice` turned into
chat function tools, and the map that turns the names the model calls back into the client's.

- `function` tools (flat: name, description, parameters, strict) become chat function tools.
- `custom` tools (free-form input, e.g. Codex's `apply_patch` with a lark grammar) become a function
  with one required string argument `input`; the description says to put the raw input there and
  carries the grammar. The model's call comes back as a `custom_tool_call` with that raw input.
- `namespace` tools (`{"type": "namespace", "name", "description", "tools": [function | custom]}`,
  as Codex sends MCP and app tools) are flattened: each inner tool becomes `<namespace>__<name>`
  (valid as a function name, unique, at most 64 characters); a call to it comes back as the inner
  `name` with `namespace` set, the way the Responses API answers.
- Hosted tools (web_search, file_search, code_interpreter, image_generation, computer, local_shell,
  shell, mcp, tool_search, apply_patch, ...) and tool types this door does not know are dropped:
  no target behind the chat core runs them. A `tool_choice` that forces one is a 400."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from relaygate.errors import InvalidRequest
from relaygate.formats.base import Untranslatable

_VALID_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_INVALID_CHARS = re.compile(r"[^a-zA-Z0-9_-]")
_MAX_NAME = 64
_CUSTOM_NOTE = (
    "This tool takes free-form text, not JSON fields: put the whole raw input for the tool, "
    "exactly as it should be received, in the string argument `input`."
)
_CHOICE_KINDS = ("function", "custom", "allowed_tools")


@dataclass(frozen=True, slots=True)
class ToolRef:
    """A tool as the client named it: its name, its namespace, and whether it is a custom tool."""

    name: str
    namespace: str | None = None
    custom: bool = False


class ToolMap:
    """Chat function names <-> the client's tools. Names the request did not declare map to a
    plain function of the same name (a model may call a tool it was not given)."""

    __slots__ = ("_by_flat", "_flat")

    def __init__(self) -> None:
        self._by_flat: dict[str, ToolRef] = {}
        self._flat: dict[tuple[str | None, str], str] = {}

    def resolve(self, flat: str) -> ToolRef:
        return self._by_flat.get(flat) or ToolRef(flat)

    def flat(self, name: str, namespace: str | None = None) -> str:
        """The chat name of a tool the client names (a replayed call, a forced choice)."""
        known = self._flat.get((namespace, name))
        if known is not None:
            return known
        return name if namespace is None else flat_name(namespace, name)

    def add(self, ref: ToolRef) -> str:
        key = (ref.namespace, ref.name)
        if key in self._flat:
            return self._flat[key]
        flat = ref.name if ref.namespace is None else flat_name(ref.namespace, ref.name)
        if flat in self._by_flat:
            flat = _hashed(flat, f"{ref.namespace}\x00{ref.name}")
        self._by_flat[flat] = ref
        self._flat[key] = flat
        return flat


def flat_name(namespace: str, name: str) -> str:
    """`<namespace>__<name>` with the underscores around the join trimmed (as Codex joins them),
    other characters outside [a-zA-Z0-9_-] replaced, and a hash suffix when over 64."""
    raw = f"{namespace.rstrip('_')}__{name.lstrip('_')}"
    clean = _INVALID_CHARS.sub("_", raw)
    return clean if _VALID_NAME.match(clean) else _hashed(clean, raw)


def _hashed(name: str, key: str) -> str:
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return f"{name[: _MAX_NAME - 9]}_{digest}"


def chat_tools(tools: object) -> tuple[ToolMap, list[dict[str, Any]]]:
    """The request's `tools` -> (the name map, the chat tools). Plain tools claim their names
    first, so a flattened name never takes one."""
    names = ToolMap()
    if tools is None:
        return names, []
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array.", param="tools")
    out: list[tuple[int, dict[str, Any]]] = []
    nested: list[tuple[int, str, str, list[Any]]] = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        kind = _kind(tool, where)
        if kind in ("function", "custom"):
            out.append((i, _tool(tool, where, names, namespace=None)))
        elif kind == "namespace":
            namespace = _string(tool, "name", where)
            inner = tool.get("tools")
            if not isinstance(inner, list):
                raise InvalidRequest(f"'{where}.tools' must be an array.", param=f"{where}.tools")
            about = tool.get("description")
            nested.append((i, namespace, about if isinstance(about, str) else "", inner))
    for i, namespace, about, inner in nested:
        for j, tool in enumerate(inner):
            where = f"tools[{i}].tools[{j}]"
            if _kind(tool, where) not in ("function", "custom"):
                continue
            chat = _tool(tool, where, names, namespace=namespace)
            if about.strip():
                function = chat["function"]
                text = function.get("description") or ""
                function["description"] = f"{text}\n\nNamespace {namespace}: {about}".strip()
            out.append((i, chat))
    out.sort(key=lambda pair: pair[0])  # stable: keeps the client's order
    return names, [chat for _, chat in out]


def _kind(tool: object, where: str) -> str:
    if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
        raise InvalidRequest(f"'{where}' must be an object with a 'type'.", param=where)
    kind: str = tool["type"]
    return kind


def _tool(
    tool: dict[str, Any], where: str, names: ToolMap, *, namespace: str | None
) -> dict[str, Any]:
    name = _string(tool, "name", where)
    description = tool.get("description")
    if description is not None and not isinstance(description, str):
        raise InvalidRequest(
            f"'{where}.description' must be a string.", param=f"{where}.description"
        )
    custom = tool["type"] == "custom"
    function: dict[str, Any] = {"name": names.add(ToolRef(name, namespace, custom))}
    if custom:
        function["description"] = _custom_description(description, tool.get("format"), where)
        function["parameters"] = {
            "type": "object",
            "properties": {
                "input": {"type": "string", "description": "The raw free-form input for the tool."}
            },
            "required": ["input"],
            "additionalProperties": False,
        }
        return {"type": "function", "function": function}
    if description:
        function["description"] = description
    parameters = tool.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidRequest(
            f"'{where}.parameters' must be an object.", param=f"{where}.parameters"
        )
    function["parameters"] = parameters if parameters is not None else _empty_schema()
    strict = tool.get("strict")
    if strict is not None:
        if not isinstance(strict, bool):
            raise InvalidRequest(f"'{where}.strict' must be a boolean.", param=f"{where}.strict")
        function["strict"] = strict
    return {"type": "function", "function": function}


def _empty_schema() -> dict[str, Any]:
    return {"type": "object", "properties": {}}


def _custom_description(description: str | None, fmt: object, where: str) -> str:
    parts = [description.strip()] if description and description.strip() else []
    parts.append(_CUSTOM_NOTE)
    if fmt is not None and not isinstance(fmt, dict):
        raise InvalidRequest(f"'{where}.format' must be an object.", param=f"{where}.format")
    if isinstance(fmt, dict) and fmt.get("type") == "grammar":
        syntax, definition = fmt.get("syntax"), fmt.get("definition")
        if isinstance(definition, str) and definition.strip():
            kind = syntax if isinstance(syntax, str) else "grammar"
            parts.append(f"The input must match this {kind} grammar:\n{definition}")
    return "\n\n".join(parts)


def _string(item: dict[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"'{where}.{key}' must be a non-empty string.", param=f"{where}.{key}")
    return value


def chat_tool_choice(choice: object, names: ToolMap, *, has_tools: bool) -> Any:
    """The request's `tool_choice` -> chat's (None: leave it out)."""
    if choice is None:
        return None
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise InvalidRequest(
                "'tool_choice' must be 'auto', 'none', 'required' or an object.",
                param="tool_choice",
            )
        out: Any = choice
    elif isinstance(choice, dict) and isinstance(choice.get("type"), str):
        kind = choice["type"]
        if kind not in _CHOICE_KINDS:
            raise Untranslatable(
                f"'tool_choice' forces the hosted tool '{kind}', which this gateway cannot run "
                "for any model; give it as a function tool or use 'auto'.",
                param="tool_choice",
            )
        if kind == "allowed_tools":
            out = "required" if choice.get("mode") == "required" else "auto"
        else:
            name = choice.get("name")
            if not isinstance(name, str) or not name:
                raise InvalidRequest(
                    "'tool_choice.name' must be a non-empty string.", param="tool_choice.name"
                )
            out = {"type": "function", "function": {"name": names.flat(name)}}
    else:
        raise InvalidRequest("'tool_choice' must be a string or an object.", param="tool_choice")
    if has_tools:
        return out
    if out in ("auto", "none"):
        return None
    raise Untranslatable(
        "'tool_choice' asks for a tool call, but no function or custom tool was given (hosted "
        "tools are not run by this gateway).",
        param="tool_choice",
    )
