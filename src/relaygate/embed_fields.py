"""The fields of an OpenAI embeddings body that are checked before anything is routed or paid
for (SPEC §7a, §8a; protocols.md §14.1): `model`, `input` (a string, an array of strings, an
array of token ids, or an array of token-id arrays; at most 2048 entries, no empty string, no
empty array), `encoding_format` (float or base64), `dimensions` (a positive integer), `user`.
A wrong field is a 400 naming it; the front door and the library check the same way."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from relaygate.chat_fields import check_model
from relaygate.errors import InvalidRequest

MAX_INPUTS = 2048
FORMATS = ("float", "base64")
_INPUT = (
    "'input' must be a non-empty string, an array of non-empty strings, an array of token ids, "
    "or an array of non-empty token-id arrays"
)


def check(body: Mapping[str, Any]) -> None:
    """Raise InvalidRequest naming the first wrong field."""
    if not isinstance(body, Mapping):
        raise InvalidRequest("The body must be a JSON object.")
    if body.get("model") is None:
        raise InvalidRequest("'model' is required.", param="model")
    check_model(body.get("model"))
    check_input(body.get("input"))
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in FORMATS:
        raise InvalidRequest(
            "'encoding_format' must be 'float' or 'base64'.", param="encoding_format"
        )
    dims = body.get("dimensions")
    if dims is not None and not _positive(dims):
        raise InvalidRequest("'dimensions' must be a positive integer.", param="dimensions")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidRequest("'user' must be a string.", param="user")


def check_input(value: object) -> None:
    if isinstance(value, str):
        if not value:
            raise InvalidRequest(_INPUT + ".", param="input")
        return
    if not isinstance(value, list) or not value:
        raise InvalidRequest(_INPUT + ".", param="input")
    if len(value) > MAX_INPUTS:
        raise InvalidRequest(f"'input' holds at most {MAX_INPUTS} entries.", param="input")
    first = value[0]
    if isinstance(first, str):
        ok = all(isinstance(v, str) and v for v in value)
    elif isinstance(first, list):
        ok = all(isinstance(v, list) and v and all(_token(t) for t in v) for v in value)
    else:
        ok = all(_token(v) for v in value)
    if not ok:
        raise InvalidRequest(_INPUT + " (one kind throughout).", param="input")


def is_tokens(value: object) -> bool:
    """Whether a checked `input` is token ids (one array, or an array of arrays)."""
    return isinstance(value, list) and not isinstance(value[0], str)


def _token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _positive(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
