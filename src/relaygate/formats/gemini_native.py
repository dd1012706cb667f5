"""The Gemini native door (SPEC §7a, protocols.md §13): the google-genai SDK pointed at the
gateway. `POST /{v1,v1beta}/models/{model}:generateContent` and `:streamGenerateContent` bodies
become chat bodies (the model comes from the path); answers, streams and errors go back in
Gemini's shapes. Module functions serve the other Gemini routes: `parse_path`,
`count_tokens_chat` / `count_tokens_body` (`:countTokens`) and `models_body` (`GET .../models`).

Decisions:
- Model names: `models/<id>` with the id as it is, `/` and `:` included (`models/groq/llama-3.3-70b`
  is what `models.list` answers; the SDK puts it into `/v1beta/models/groq/llama-3.3-70b:
  generateContent` unchanged, and `parse_path` takes the model up to the last `:`). The SDK
  refuses names holding `..`, `?` or `&`; such ids cannot be reached from it.
- Dropped (no chat equivalent, or meaningless off Gemini): `generationConfig.topK`,
  `thinkingConfig`, `responseModalities`, `speechConfig`, `mediaResolution`, logprobs fields, a
  response schema without `responseMimeType: application/json`, other response mime types;
  `safetySettings`, `cachedContent`; hosted tools (googleSearch, codeExecution, urlContext...).
- `functionCallingConfig`: AUTO and VALIDATED -> auto, NONE -> none, ANY -> required; ANY with one
  allowed function forces it, with several keeps only those tools.
- Errors: google.rpc.Status with the HTTP status as `code`, the canonical name by Google's mapping
  (413 and other 4xx INVALID_ARGUMENT, 502 UNAVAILABLE, 504 DEADLINE_EXCEEDED, other 5xx
  INTERNAL) and details: ErrorInfo (the gateway's error code, upper-cased, as reason; the field
  at fault as `metadata.param`) and RetryInfo when the client should wait."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

import orjson

from relaygate.errors import RelaygateError
from relaygate.formats import _gemini_request as rq
from relaygate.formats._gemini_stream import (
    GeminiStream,
    canonical_status,
    error_event,
    render_response,
)
from relaygate.formats.base import Door, DoorStream

_PATH = re.compile(r"^/(v1|v1beta)/models/(.+)$")
_METHOD = re.compile(r"^[A-Za-z]+$")
_MODES = {"AUTO": "auto", "VALIDATED": "auto", "ANY": "required", "NONE": "none"}
_METHODS = ["generateContent", "countTokens"]
_TYPES = "type.googleapis.com/google.rpc."
_COUNT_ID = "req_" + "0" * 32


class GeminiNative(Door):
    name = "gemini_native"
    route = "/v1beta/models:generateContent"
    # a passed-through body reserves by its own limit (read by `output_limit`, snake_case too)
    output_limit_field = ("generationConfig", "maxOutputTokens")

    def chat_body(self) -> dict[str, Any]:
        body = self.body
        out: dict[str, Any] = {}
        if self.model is not None:
            model = rq.as_str(self.model, "model").removeprefix("models/")
            self.model = model
            out["model"] = model
        messages: list[dict[str, Any]] = []
        system = rq.system_text(rq.field(body, "systemInstruction"))
        if system:
            messages.append({"role": "system", "content": system})
        contents = rq.field(body, "contents")
        if not isinstance(contents, list) or not contents:
            rq.invalid("'contents' must be a non-empty array of Content objects.", "contents")
        turns = rq.Turns(lambda n: self.new_id("call", n))
        for i, content in enumerate(contents):
            turns.add(content, f"contents[{i}]")
        sent = turns.messages()
        if not sent:
            rq.invalid(
                "'contents' holds nothing to send (only thoughts or empty parts).", "contents"
            )
        out["messages"] = messages + sent
        _tools(body, out)
        _generation(body, out)
        if self.stream:
            out["stream"] = True
            out["stream_options"] = {"include_usage": True}
        return out

    def render(self, completion: Mapping[str, Any]) -> bytes:
        return render_response(completion, response_id=self.new_id("resp"), model=self.model)

    def streamer(self) -> DoorStream:
        return GeminiStream(response_id=self.new_id("resp"), model=self.model)

    def output_limit(self) -> int | None:
        """`generationConfig.maxOutputTokens`, by either spelling the door accepts."""
        config = rq.field(self.body, "generationConfig")
        value = rq.field(config, "maxOutputTokens") if isinstance(config, dict) else None
        ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        return value if ok else None

    @classmethod
    def stream_error(cls, error: Mapping[str, Any]) -> bytes:
        """A passed-through stream that failed: a google.rpc.Status `data:` event. The SDK takes
        the event's `error.code` as the HTTP status, so the SPEC's event (a string code) would
        break it with a TypeError instead of raising an APIError."""
        return error_event(error)

    @classmethod
    def error_body(cls, error: RelaygateError, message: str) -> bytes:
        details: list[dict[str, Any]] = []
        if error.code:
            info: dict[str, Any] = {"@type": _TYPES + "ErrorInfo", "reason": error.code.upper()}
            info["domain"] = "relaygate"
            if error.param:
                info["metadata"] = {"param": error.param}
            details.append(info)
        if error.retry_after_s:
            details.append({"@type": _TYPES + "RetryInfo", "retryDelay": f"{error.retry_after_s}s"})
        body: dict[str, Any] = {
            "code": error.status,
            "message": message,
            "status": canonical_status(error.status),
        }
        if details:
            body["details"] = details
        return orjson.dumps({"error": body})


def _tools(body: Mapping[str, Any], out: dict[str, Any]) -> None:
    """`tools[].functionDeclarations` -> chat function tools (hosted tools are dropped) and
    `toolConfig.functionCallingConfig` -> tool_choice."""
    tools: list[dict[str, Any]] = []
    raw = rq.field(body, "tools")
    for i, tool in enumerate(rq.as_list(raw, "tools") if raw is not None else []):
        where = f"tools[{i}]"
        declared = rq.field(rq.as_object(tool, where), "functionDeclarations")
        for j, decl in enumerate(rq.as_list(declared or [], f"{where}.functionDeclarations")):
            tools.append(_function(decl, f"{where}.functionDeclarations[{j}]"))
    choice = _tool_choice(body, [t["function"]["name"] for t in tools])
    if isinstance(choice, list):  # ANY over several allowed functions: only those
        tools, choice = [t for t in tools if t["function"]["name"] in choice], "required"
    if tools:
        out["tools"] = tools
        if choice is not None:
            out["tool_choice"] = choice


def _function(decl: Any, where: str) -> dict[str, Any]:
    decl = rq.as_object(decl, where)
    function: dict[str, Any] = {"name": rq.as_str(rq.field(decl, "name"), f"{where}.name")}
    description = rq.field(decl, "description")
    if description is not None:
        function["description"] = rq.as_str(description, f"{where}.description")
    as_json = rq.field(decl, "parametersJsonSchema")
    if as_json is not None:
        function["parameters"] = rq.as_object(as_json, f"{where}.parametersJsonSchema")
    elif rq.field(decl, "parameters") is not None:
        function["parameters"] = rq.json_schema(rq.field(decl, "parameters"), f"{where}.parameters")
    return {"type": "function", "function": function}


def _tool_choice(body: Mapping[str, Any], names: list[str]) -> Any:
    """The tool_choice, or the list of allowed names when ANY allows several."""
    where = "toolConfig.functionCallingConfig"
    config = rq.field(body, "toolConfig")
    calling = (
        rq.field(rq.as_object(config, "toolConfig"), "functionCallingConfig") if config else None
    )
    if not calling:
        return None
    calling = rq.as_object(calling, where)
    mode = rq.field(calling, "mode")
    if mode is None or mode == "MODE_UNSPECIFIED":
        return None
    choice = _MODES.get(rq.as_str(mode, f"{where}.mode").upper())
    if choice is None:
        rq.invalid(f"'{where}.mode' must be AUTO, ANY, NONE or VALIDATED.", f"{where}.mode")
    allowed = rq.field(calling, "allowedFunctionNames")
    if choice != "required" or not allowed:
        return choice
    at = f"{where}.allowedFunctionNames"
    allowed = [rq.as_str(n, at) for n in rq.as_list(allowed, at)]
    unknown = [n for n in allowed if n not in names]
    if unknown:
        rq.invalid(f"'{at}' names undeclared functions: {', '.join(unknown)}.", at)
    if len(allowed) == 1:
        return {"type": "function", "function": {"name": allowed[0]}}
    return allowed


def _number(config: Mapping[str, Any], name: str, *, whole: bool = False) -> Any:
    value = rq.field(config, name)
    kinds = (int,) if whole else (int, float)
    if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
        what = "an integer" if whole else "a number"
        rq.invalid(f"'generationConfig.{name}' must be {what}.", f"generationConfig.{name}")
    return value


def _count(config: Mapping[str, Any], name: str) -> int | None:
    value: int | None = _number(config, name, whole=True)
    if value is not None and value < 1:
        where = f"generationConfig.{name}"
        rq.invalid(f"'{where}' must be a positive integer.", where)
    return value


def _generation(body: Mapping[str, Any], out: dict[str, Any]) -> None:
    raw = rq.field(body, "generationConfig")
    if raw is None:
        return
    config = rq.as_object(raw, "generationConfig")
    names = {
        "temperature": "temperature",
        "topP": "top_p",
        "presencePenalty": "presence_penalty",
        "frequencyPenalty": "frequency_penalty",
    }
    for name, chat in names.items():
        value = _number(config, name)
        if value is not None:
            out[chat] = value
    seed = _number(config, "seed", whole=True)
    if seed is not None:
        out["seed"] = seed
    most = _count(config, "maxOutputTokens")
    if most is not None:
        out["max_tokens"] = most
    candidates = _count(config, "candidateCount")
    if candidates is not None and candidates > 1:
        out["n"] = candidates
    stop = rq.field(config, "stopSequences")
    if stop is not None:
        at = "generationConfig.stopSequences"
        stop = [rq.as_str(s, at) for s in rq.as_list(stop, at)]
        if stop:
            out["stop"] = stop
    _response_format(config, out)


def _response_format(config: Mapping[str, Any], out: dict[str, Any]) -> None:
    mime = rq.field(config, "responseMimeType")
    if mime is None:
        return
    where = "generationConfig.responseMimeType"
    if rq.as_str(mime, where).lower() != "application/json":
        return
    as_json = rq.field(config, "responseJsonSchema")
    schema = rq.field(config, "responseSchema")
    if as_json is not None:
        found = rq.as_object(as_json, "generationConfig.responseJsonSchema")
    elif schema is not None:
        found = rq.json_schema(schema, "generationConfig.responseSchema")
    else:
        out["response_format"] = {"type": "json_object"}
        return
    out["response_format"] = {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": found},
    }


def parse_path(path: str) -> tuple[str, str, str] | None:
    """`/{v1,v1beta}/models/{model}:{method}` -> (api version, model, method); the model may hold
    `/` and `:` (the method follows the last `:`) and url-escapes. None for any other path."""
    found = _PATH.match(path.partition("?")[0])
    if found is None:
        return None
    version, rest = found.groups()
    model, sep, method = rest.rpartition(":")
    if not sep:
        model, sep, method = unquote(rest).rpartition(":")
    model = unquote(model)
    if not sep or not model or not _METHOD.match(method):
        return None
    return version, model, method


def count_tokens_chat(body: Mapping[str, Any], model: str) -> dict[str, Any]:
    """A `:countTokens` body (`{"contents"}`, or REST's `{"generateContentRequest"}`) -> the chat
    body whose size the handler estimates."""
    if not isinstance(body, Mapping):
        rq.invalid("The body must be a JSON object.", "contents")
    inner = rq.field(body, "generateContentRequest")
    request = rq.as_object(inner, "generateContentRequest") if inner is not None else dict(body)
    door = GeminiNative(request, request_id=_COUNT_ID, model=model, stream=False)
    return door.chat_body()


def count_tokens_body(total: int) -> bytes:
    return orjson.dumps({"totalTokens": total})


def models_body(
    model_ids: list[str], *, limits: Mapping[str, tuple[int | None, int | None]] | None = None
) -> bytes:
    """`GET /{v1,v1beta}/models` in Gemini's shape: each id as `models/<id>` (`/` kept, see the
    module docstring); `limits` gives an id's (input, output) token limits where known."""
    models = []
    for model_id in model_ids:
        entry: dict[str, Any] = {"name": f"models/{model_id}", "displayName": model_id}
        given, output = (limits or {}).get(model_id, (None, None))
        if given:
            entry["inputTokenLimit"] = given
        if output:
            entry["outputTokenLimit"] = output
        entry["supportedGenerationMethods"] = _METHODS
        models.append(entry)
    return orjson.dumps({"models": models})


DOOR = GeminiNative
