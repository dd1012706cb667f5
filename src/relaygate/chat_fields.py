"""The fields of an OpenAI chat body that are checked before anything is routed or paid for
(SPEC §8a): their types, the model name's characters, the counts that size a budget reservation.
A wrong field is a 400 naming it; a field the gateway does not know passes on untouched."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from relaygate.errors import InvalidRequest

MAX_MODEL_CHARS = 256
_NUMBER = (int, float)

# field -> (accepted types, what the message says). bool is refused where a number is wanted.
_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "stream": ((bool,), "a boolean"),
    "stream_options": ((dict,), "an object"),
    "temperature": (_NUMBER, "a number"),
    "top_p": (_NUMBER, "a number"),
    "presence_penalty": (_NUMBER, "a number"),
    "frequency_penalty": (_NUMBER, "a number"),
    "seed": ((int,), "an integer"),
    "top_logprobs": ((int,), "an integer"),
    "logprobs": ((bool,), "a boolean"),
    "parallel_tool_calls": ((bool,), "a boolean"),
    "stop": ((str, list), "a string or an array of strings"),
    "tools": ((list,), "an array"),
    "tool_choice": ((str, dict), "a string or an object"),
    "response_format": ((dict,), "an object"),
    "logit_bias": ((dict,), "an object"),
    "metadata": ((dict,), "an object"),
    "user": ((str,), "a string"),
    "extra_body": ((dict,), "an object"),  # merged into the upstream body (providers/base.py)
}
COUNTS = ("max_tokens", "max_completion_tokens", "n")


def check(body: Mapping[str, Any]) -> None:
    """Raise InvalidRequest naming the first wrong field."""
    check_model(body.get("model"))
    for name, (types, what) in _TYPES.items():
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise InvalidRequest(f"'{name}' must be {what}.", param=name)
    for name in COUNTS:
        value = body.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise InvalidRequest(f"'{name}' must be a positive integer.", param=name)
    _check_messages(body.get("messages"))
    _check_nested(body)


def check_model(model: object) -> None:
    if model is None:
        return
    if not isinstance(model, str):
        raise InvalidRequest("'model' must be a string.", param="model")
    if not 1 <= len(model) <= MAX_MODEL_CHARS or not model.isprintable():
        raise InvalidRequest(
            f"'model' must be 1-{MAX_MODEL_CHARS} printable characters, without control "
            "characters.",
            param="model",
        )


def _check_messages(messages: object) -> None:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"'{where}' must be an object.", param=where)
        if not isinstance(message.get("role"), str):
            raise InvalidRequest(f"'{where}.role' must be a string.", param=f"{where}.role")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise InvalidRequest(
                f"'{where}.content' must be a string, an array of parts or null.",
                param=f"{where}.content",
            )
        if isinstance(content, list) and not all(isinstance(p, dict) for p in content):
            raise InvalidRequest(
                f"'{where}.content' parts must be objects.", param=f"{where}.content"
            )


def _check_nested(body: Mapping[str, Any]) -> None:
    stop = body.get("stop")
    if isinstance(stop, list) and not all(isinstance(s, str) for s in stop):
        raise InvalidRequest("'stop' must be a string or an array of strings.", param="stop")
    tools = body.get("tools")
    if isinstance(tools, list) and not all(isinstance(t, dict) for t in tools):
        raise InvalidRequest("'tools' must be an array of objects.", param="tools")
    usage = (body.get("stream_options") or {}).get("include_usage")
    if usage is not None and not isinstance(usage, bool):
        raise InvalidRequest(
            "'stream_options.include_usage' must be a boolean.",
            param="stream_options.include_usage",
        )


def output_tokens(body: Mapping[str, Any], default: int) -> int:
    """The most output a request may produce, for reservations: `max_completion_tokens`, else
    `max_tokens`, else `default` (the model's known limit or the configured default), times
    `n`. The body has passed `check`."""
    most = body.get("max_completion_tokens") or body.get("max_tokens") or default
    return int(most) * int(body.get("n") or 1)
