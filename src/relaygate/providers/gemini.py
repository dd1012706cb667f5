"""Google Gemini generateContent (protocols.md §4): OpenAI chat in, contents out, answers and SSE
streams back as OpenAI, and google.rpc.Status errors classified (400 API_KEY_INVALID is a bad key;
a 429 with a PerDay quotaId parks the key until midnight Pacific time).

Images must arrive as data: URLs (or Files API / gs:// URIs, sent as fileData). Other https image
URLs get a 400: fetching arbitrary client-given URLs from the gateway would be an SSRF hole."""

from __future__ import annotations

import mimetypes
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from relaygate.providers import _translate as tr
from relaygate.providers import base
from relaygate.providers._gemini_errors import classify, inband_failure
from relaygate.providers._native import (
    SSERelay,
    as_int,
    choice,
    completion,
    load_json,
    new_call_id,
    new_id,
    tool_call,
    usage_object,
)
from relaygate.providers.base import InBandFailure, ProviderMeta
from relaygate.types import Failure, UpstreamRequest, Usage

if TYPE_CHECKING:
    from relaygate.config.model import ProviderConfig

META = ProviderMeta(
    kind="gemini",
    default_base_url="https://generativelanguage.googleapis.com/v1beta",
    env_aliases=("GOOGLE",),
    name_aliases=("google",),
    model_prefixes=("gemini-", "gemma-"),
)
NAME = "Gemini"
_FILE_URIS = ("gs://", "https://generativelanguage.googleapis.com/")
_FILTERED = {"SAFETY", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "RECITATION"}
_CHOICE_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}


def finish_reason(native: Any) -> str:
    if native == "MAX_TOKENS":
        return "length"
    if native in _FILTERED or str(native).startswith("IMAGE_"):
        return "content_filter"
    return "stop"  # STOP, OTHER, MALFORMED_FUNCTION_CALL, ...: tool calls are noted by the caller


# --- request ------------------------------------------------------------------------------------
def _media(url: str) -> dict[str, Any]:
    found = tr.data_url(url)
    if found is not None:
        return {"inlineData": {"mimeType": found[0], "data": found[1]}}
    if url.startswith(_FILE_URIS):
        data: dict[str, Any] = {"fileUri": url}
        mime = mimetypes.guess_type(url)[0]
        if mime:
            data["mimeType"] = mime
        return {"fileData": data}
    tr.invalid(
        f"{NAME} needs the image bytes: send images as base64 data: URLs (the gateway does not "
        "fetch image URLs).",
        "messages",
    )


def _user_parts(content: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for part in tr.parts(content):
        kind = part.get("type", "text")
        if kind == "text":
            if part.get("text"):
                out.append({"text": str(part["text"])})
        elif kind == "image_url":
            out.append(_media(tr.image_url(part)))
        elif kind == "file" and isinstance(part.get("file"), dict):
            out.append(_media(str(part["file"].get("file_data") or "")))
        elif kind == "input_audio" and isinstance(part.get("input_audio"), dict):
            audio = part["input_audio"]
            mime = f"audio/{audio.get('format') or 'wav'}"
            out.append({"inlineData": {"mimeType": mime, "data": str(audio.get("data") or "")}})
        else:
            tr.unsupported_part(kind, NAME)
    return out


def _native_id(call_id: str) -> str | None:
    """A function call id Gemini itself gave (ours start with call_), to be sent back."""
    plain, _ = tr.split_signature(call_id)
    return plain if plain and not plain.startswith("call_") else None


def _model_parts(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    text = tr.text_of(message.get("content"), "")
    out: list[dict[str, Any]] = [{"text": text}] if text else []
    for call_id, name, args in tr.tool_calls(message):
        call: dict[str, Any] = {"name": name, "args": args}
        if _native_id(call_id):
            call["id"] = _native_id(call_id)
        part: dict[str, Any] = {"functionCall": call}
        signature = tr.split_signature(call_id)[1]
        if signature:
            part["thoughtSignature"] = signature
        out.append(part)
    return out


def _function_response(message: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    result: dict[str, Any] = {
        "name": tr.tool_name_for(message, names),
        "response": tr.json_object(tr.text_of(message.get("content"), "")),
    }
    native = _native_id(str(message.get("tool_call_id") or ""))
    if native:
        result["id"] = native
    return {"functionResponse": result}


def _contents(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Any]]:
    names = tr.tool_names(messages)
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            text = tr.text_of(message.get("content"))
            system += [{"text": text}] if text else []
            continue
        if role == "user":
            native, found = "user", _user_parts(message.get("content"))
        elif role == "assistant":
            native, found = "model", _model_parts(message)
        elif role == "tool":  # function results go back in a user turn
            native, found = "user", [_function_response(message, names)]
        else:
            tr.invalid(f"Unsupported message role {role!r}.", "messages")
        if not found:
            continue
        if contents and contents[-1]["role"] == native:
            contents[-1]["parts"].extend(found)
        else:
            contents.append({"role": native, "parts": found})
    return system, contents


def _generation_config(body: Mapping[str, Any], stream: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    names = {
        "temperature": "temperature",
        "top_p": "topP",
        "top_k": "topK",
        "seed": "seed",
        "presence_penalty": "presencePenalty",
        "frequency_penalty": "frequencyPenalty",
    }
    for key, native in names.items():
        if tr.number(body, key) is not None:
            out[native] = body[key]
    if tr.max_tokens(body):
        out["maxOutputTokens"] = tr.max_tokens(body)
    if tr.stop_list(body):
        out["stopSequences"] = tr.stop_list(body)
    n = tr.number(body, "n")
    if n is not None and n != 1:
        if stream:
            tr.invalid(f"{NAME} streams one choice: 'n' must be 1 with stream.", "n")
        out["candidateCount"] = int(n)
    fmt = tr.response_format(body)
    if fmt is not None:
        out["responseMimeType"] = "application/json"
        if fmt[1] is not None:
            out["responseJsonSchema"] = fmt[1]
    return out


def _tools(body: Mapping[str, Any], out: dict[str, Any]) -> None:
    declarations = tr.declarations(body, "parametersJsonSchema")
    if declarations:
        out["tools"] = [{"functionDeclarations": declarations}]
    choice_ = tr.tool_choice(body)
    config: dict[str, Any] | None = None
    if isinstance(choice_, tuple):
        config = {"mode": "ANY", "allowedFunctionNames": [choice_[1]]}
    elif choice_ is not None:
        config = {"mode": _CHOICE_MODES[choice_]}
    if config is not None and declarations:
        out["toolConfig"] = {"functionCallingConfig": config}


def build_body(body: Mapping[str, Any], stream: bool) -> dict[str, Any]:
    system, contents = _contents(tr.messages_of(body))
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    generation = _generation_config(body, stream)
    if generation:
        out["generationConfig"] = generation
    _tools(body, out)
    return out


# --- answers ------------------------------------------------------------------------------------
def usage_of(meta: Mapping[str, Any]) -> tuple[dict[str, Any], Usage]:
    thoughts = as_int(meta.get("thoughtsTokenCount"))
    prompt = as_int(meta.get("promptTokenCount")) + as_int(meta.get("toolUsePromptTokenCount"))
    return usage_object(
        prompt,
        as_int(meta.get("candidatesTokenCount")) + thoughts,
        cached=as_int(meta.get("cachedContentTokenCount")),
        reasoning=thoughts,
        total=as_int(meta.get("totalTokenCount")) or None,
    )


def _call(part: Mapping[str, Any]) -> tuple[str, str, str]:
    """(id, name, arguments JSON) of a functionCall part; the thought signature rides in the id."""
    fn = part["functionCall"]
    call_id = tr.with_signature(str(fn.get("id") or new_call_id()), part.get("thoughtSignature"))
    return call_id, str(fn.get("name") or ""), orjson.dumps(fn.get("args") or {}).decode()


def _candidate(index: int, cand: Mapping[str, Any]) -> dict[str, Any]:
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in (cand.get("content") or {}).get("parts") or ():
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("functionCall"), dict):
            calls.append(tool_call(*_call(part)))
        elif isinstance(part.get("text"), str):
            (thoughts if part.get("thought") else texts).append(part["text"])
    finish = finish_reason(cand.get("finishReason"))
    return choice(
        index,
        content="".join(texts) if texts or not calls else None,
        calls=calls,
        reasoning="".join(thoughts) or None,
        finish="tool_calls" if calls and finish == "stop" else finish,
    )


class _Relay(SSERelay):
    """Gemini SSE (data-only, ends at close) -> OpenAI chunks. No finishReason at the end of the
    body means the stream was cut: `finished` stays False."""

    def __init__(self, *, model: str, include_usage: bool) -> None:
        super().__init__(model=model, include_usage=include_usage)
        self._meta: dict[str, Any] = {}
        self._finish: str | None = None
        self._named = False

    def on_end(self) -> bytes:
        return b"" if self._finish is None else self.close(*usage_of(self._meta))

    def on_event(self, name: bytes | None, obj: dict[str, Any]) -> bytes:
        if "error" in obj:
            self.error = inband_failure(obj)
            return b""
        if not self._named:
            self._named = True
            self.id = str(obj.get("responseId") or self.id)
            self.model = str(obj.get("modelVersion") or self.model)
        if isinstance(obj.get("usageMetadata"), dict):  # running totals: keep the latest
            self._meta = {**self._meta, **obj["usageMetadata"]}
            _, usage = usage_of(self._meta)
            usage.estimated = True
            self.usage = usage
        candidates = obj.get("candidates") or []
        if not candidates:
            if (obj.get("promptFeedback") or {}).get("blockReason"):
                self._finish = "content_filter"
                return self.finish("content_filter")
            return b""
        return self._candidate(candidates[0])

    def _candidate(self, cand: Mapping[str, Any]) -> bytes:
        out = b""
        for part in (cand.get("content") or {}).get("parts") or ():
            if not isinstance(part, dict):
                continue
            if isinstance(part.get("functionCall"), dict):
                out += self.start_tool(*_call(part))[1]
            elif isinstance(part.get("text"), str):
                emit = self.reasoning if part.get("thought") else self.text
                out += emit(part["text"])
        if cand.get("finishReason"):
            self._finish = finish_reason(cand["finishReason"])
            out += self.finish(self._finish)
        return out


class Provider(base.Provider):
    meta = META
    native_doors = {
        "gemini_native": "_gemini_native",
        "openai_embeddings": "_embed_gemini",
        "gemini_embeddings": "_embed_gemini",
    }

    def __init__(self, name: str, config: ProviderConfig) -> None:
        super().__init__(name, config)
        last = self.base_url.rsplit("/", 1)[-1]
        if not last.startswith(("v1", "v2")):  # an SDK-style base without the version
            self.base_url += "/v1beta"

    def build_request(
        self, body: dict[str, Any], *, model: str, key: str | None, stream: bool
    ) -> UpstreamRequest:
        action = ":streamGenerateContent?alt=sse" if stream else ":generateContent"
        return self.model_request(model, action, key, orjson.dumps(build_body(body, stream)))

    def model_request(
        self, model: str, action: str, key: str | None, payload: bytes
    ) -> UpstreamRequest:
        """POST {base}/models/{model}{action} with the key and the configured headers."""
        headers = {"content-type": "application/json"}
        if key:
            headers["x-goog-api-key"] = key
        headers.update(self.config.headers)
        name = quote(model.removeprefix("models/"), safe="-._~")
        return UpstreamRequest("POST", f"{self.base_url}/models/{name}{action}", headers, payload)

    def models_request(self, key: str | None) -> UpstreamRequest | None:
        headers = {"x-goog-api-key": key} if key else {}
        headers.update(self.config.headers)
        return UpstreamRequest("GET", f"{self.base_url}/models?pageSize=1000", headers)

    def parse_models(self, body: bytes) -> list[str]:
        """`{"models": [{"name": "models/gemini-2.5-flash", "supportedGenerationMethods"}]}`:
        the ones that generate content, without `models/`."""
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return []
        items = obj.get("models") if isinstance(obj, dict) else None
        found = []
        for item in items if isinstance(items, list) else ():
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                continue
            methods = item.get("supportedGenerationMethods")
            if isinstance(methods, list) and "generateContent" not in methods:
                continue
            found.append(item["name"].removeprefix("models/"))
        return found

    def parse_response(self, body: bytes, *, model: str) -> tuple[bytes, Usage | None]:
        obj = load_json(body)
        if "error" in obj:
            raise InBandFailure(inband_failure(obj))
        candidates = [c for c in obj.get("candidates") or () if isinstance(c, dict)]
        choices = [_candidate(i, c) for i, c in enumerate(candidates)]
        if not choices:
            blocked = (obj.get("promptFeedback") or {}).get("blockReason")
            if not blocked:
                raise InBandFailure(Failure("server", 502, "upstream answer has no candidates"))
            choices = [choice(0, content=None, calls=[], reasoning=None, finish="content_filter")]
        usage, counted = usage_of(obj.get("usageMetadata") or {})
        out = completion(
            id_=str(obj.get("responseId") or new_id()),
            created=int(time.time()),
            model=str(obj.get("modelVersion") or model),
            choices=choices,
            usage=usage,
        )
        return out, counted

    def stream_relay(self, *, model: str, include_usage: bool) -> _Relay:
        return _Relay(model=model, include_usage=include_usage)

    def classify_error(self, status: int, headers: Mapping[str, str], body: bytes) -> Failure:
        try:
            obj = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            obj = {}
        if isinstance(obj, list) and obj:  # some front ends wrap the status in an array
            obj = obj[0]
        err = obj.get("error") if isinstance(obj, dict) else None
        if not isinstance(err, dict):
            text = body[:300].decode("utf-8", "replace").strip() or "upstream error"
            err = {"message": text}
        return classify(status, err)
