"""The seed routes (SPEC §7a): the answers the gateways relaygate replaces gave on routes of their
own, kept so their users' scripts run unchanged. `POST /chat` (form field `prompt`, or JSON),
`/chat/json` (`{"prompt"}`), `/v1/generate` (`{"prompt", "model"}`): `Prompt`; `POST /ask`
(`{"input"}`): `Ask`; `POST /upload` (multipart `file`, transcribed): `Upload`. Each answers
`{"response", "model", "usage"}`; errors are the SPEC's. Without a model the proxy gives the
door `routing.seed_model` (else the priority chain), /upload `routing.audio_model` (else the
first provider that serves transcription). Streaming is refused: no seed streamed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import parse_qsl

import orjson

from relaygate.errors import InvalidRequest
from relaygate.formats._form import FormReader
from relaygate.formats.audio import Transcription
from relaygate.formats.base import Door, DoorStream

_PASSED = ("max_tokens", "temperature", "top_p", "stop")  # chat fields a seed body may add


class Prompt(Door):
    name = "seed"
    route = "seed"
    seed = True
    takes_forms = True
    field: ClassVar[str] = "prompt"

    @classmethod
    def parse_form(cls, raw: bytes, content_type: str | None) -> dict[str, Any]:
        """The body by its content type: a urlencoded or multipart form (its text fields), else
        one JSON object."""
        kind = (content_type or "").split(";", 1)[0].strip().lower()
        if kind == "application/x-www-form-urlencoded":
            try:
                return dict(parse_qsl(raw.decode("utf-8"), max_num_fields=64, errors="strict"))
            except (UnicodeDecodeError, ValueError):
                raise InvalidRequest("The form body is not valid.") from None
        if kind == "multipart/form-data":
            form = FormReader(content_type)
            try:
                form.feed(raw)
                form.finish()
            finally:
                form.close()
            return dict(form.fields)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise InvalidRequest("The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise InvalidRequest("The request body must be a JSON object.")
        return body

    def chat_body(self) -> dict[str, Any]:
        body, field = self.body, self.field
        if body.get("stream") not in (None, False, "false", "0", ""):
            raise InvalidRequest(
                "The seed routes do not stream: leave out 'stream'.", param="stream"
            )
        text = body.get(field)
        if not isinstance(text, str) or not text.strip():
            raise InvalidRequest(f"'{field}' is required: the text to send.", param=field)
        messages: list[dict[str, Any]] = []
        system = body.get("system")
        if isinstance(system, str) and system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": text})
        chat: dict[str, Any] = {"messages": messages, "stream": False}
        if self.model is not None:
            chat["model"] = self.model
        for key in _PASSED:
            if key in body:
                chat[key] = _number(body[key]) if key != "stop" else body[key]
        self.stream = False
        return chat

    def render(self, completion: Mapping[str, Any]) -> bytes:
        choices = completion.get("choices") or [{}]
        message = choices[0].get("message") or {}
        text = message.get("content") if isinstance(message, dict) else None
        return answer(text or "", completion.get("model"), completion.get("usage"))

    def streamer(self) -> DoorStream:
        raise InvalidRequest("The seed routes do not stream.", param="stream")


class Ask(Prompt):
    field = "input"


class Upload(Transcription):
    """/upload: a transcription with the seed's answer; the ledger's route is the seeds'."""

    route = "seed"
    seed = True


def answer(text: str, model: Any, usage: Any) -> bytes:
    return orjson.dumps(
        {"response": text, "model": model, "usage": usage if isinstance(usage, dict) else {}}
    )


def _number(value: Any) -> Any:
    """A form sends every value as text: a number's text as the number."""
    if not isinstance(value, str):
        return value
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value


DOOR = Prompt
ASK = Ask
UPLOAD = Upload
