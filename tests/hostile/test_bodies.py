"""Hostile bodies (SPEC §8, §8a): every chat field of the wrong type, model names with control
characters or out of length, bodies that are not one JSON object (empty, truncated, scalars,
arrays, invalid UTF-8, NUL bytes, 100k-deep nesting), bodies over the 10 MiB limit (sent, sent
chunked, and declared by Content-Length only) to POST /v1/chat/completions; and bad bodies to the
admin API (POST /admin/clients, PATCH /admin/clients/{id}).

Each case checks: the SPEC's status and error shape (a 400 names the wrong field in `param`), no
upstream call, no 500, no canary secret in the answer or the log, no traceback in the log. The same
bodies without a valid client key get the fixed 401 (auth comes before the body is read), and the
admin bodies without the admin secret get 403 and change nothing."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
import pytest

from tests.hostile.conftest import (
    ADMIN,
    ANY,
    AUTH,
    CANARY_ADMIN_SECRET,
    CANARY_UPSTREAM_KEY,
    MODEL,
    Case,
    Hostile,
    RawCase,
    request_bytes,
    run_case,
    run_raw,
)

CHAT = "/v1/chat/completions"
LIMIT = 10 * 1024 * 1024  # server.max_body_bytes, the default
ADMIN_LIMIT = 64 * 1024  # routes/clients.py
BASE: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
JSON = ("content-type", "application/json")


def chat_body(**fields: Any) -> bytes:
    return orjson.dumps({**BASE, **fields})


def chat_without(field: str) -> bytes:
    return orjson.dumps({k: v for k, v in BASE.items() if k != field})


def spliced(field: str, raw_value: bytes) -> bytes:
    """BASE with `field` set to raw JSON text (numbers orjson would not write)."""
    return chat_body()[:-1] + b',"' + field.encode() + b'":' + raw_value + b"}"


def nested(depth: int, open_: bytes = b"[", close: bytes = b"]") -> bytes:
    return open_ * depth + close * depth


def chat(id_: str, body: Any, *, param: Any = ANY, status: Any = 400, **kw: Any) -> Case:
    return Case(
        f"chat-{id_}",
        "POST",
        CHAT,
        body,
        headers=(*AUTH.items(), JSON),
        status=status,
        param=param,
        code=kw.pop("code", "invalid_request" if status == 400 else None),
        **kw,
    )


# --- every chat field of a wrong type: 400 naming the field ------------------------------------
WRONG_TYPES: list[tuple[str, str, Any, str]] = [
    # (id, field, value, param)
    ("model-number", "model", 5, "model"),
    ("model-float", "model", 1.5, "model"),
    ("model-list", "model", [MODEL], "model"),
    ("model-object", "model", {"name": MODEL}, "model"),
    ("model-true", "model", True, "model"),
    ("model-false", "model", False, "model"),
    ("model-empty", "model", "", "model"),
    ("model-257-chars", "model", "up/" + "m" * 254, "model"),
    ("model-10k-chars", "model", "m" * 10_000, "model"),
    ("model-crlf", "model", MODEL + "\r\nX-Injected: 1", "model"),
    ("model-lf", "model", MODEL + "\n", "model"),
    ("model-nul", "model", MODEL + "\x00", "model"),
    ("model-escape", "model", "up/\x1b[31mred", "model"),
    ("model-del", "model", MODEL + "\x7f", "model"),
    ("model-tab", "model", "up/gpt\t4o", "model"),
    ("model-line-separator", "model", MODEL + "\u2028", "model"),
    ("model-zero-width-space", "model", "up/gpt\u200b-4o-mini", "model"),
    ("model-bom", "model", "\ufeff" + MODEL, "model"),
    ("messages-string", "messages", "hi", "messages"),
    ("messages-object", "messages", {"role": "user", "content": "hi"}, "messages"),
    ("messages-empty-list", "messages", [], "messages"),
    ("messages-number", "messages", 5, "messages"),
    ("messages-list-of-strings", "messages", ["hi"], "messages[0]"),
    ("messages-list-of-null", "messages", [None], "messages[0]"),
    ("messages-without-role", "messages", [{"content": "hi"}], "messages[0].role"),
    ("messages-role-number", "messages", [{"role": 5, "content": "hi"}], "messages[0].role"),
    (
        "messages-content-number",
        "messages",
        [{"role": "user", "content": 5}],
        "messages[0].content",
    ),
    (
        "messages-content-true",
        "messages",
        [{"role": "user", "content": True}],
        "messages[0].content",
    ),
    (
        "messages-content-object",
        "messages",
        [{"role": "user", "content": {"text": "hi"}}],
        "messages[0].content",
    ),
    (
        "messages-content-parts-strings",
        "messages",
        [{"role": "user", "content": ["hi"]}],
        "messages[0].content",
    ),
    (
        "messages-second-bad",
        "messages",
        [{"role": "user", "content": "hi"}, {"role": "user", "content": 7}],
        "messages[1].content",
    ),
    ("stream-yes", "stream", "yes", "stream"),
    ("stream-one", "stream", 1, "stream"),
    ("stream-zero", "stream", 0, "stream"),
    ("stream-list", "stream", [], "stream"),
    ("stream_options-string", "stream_options", "include_usage", "stream_options"),
    ("stream_options-list", "stream_options", [True], "stream_options"),
    ("stream_options-true", "stream_options", True, "stream_options"),
    (
        "include_usage-string",
        "stream_options",
        {"include_usage": "yes"},
        "stream_options.include_usage",
    ),
    ("include_usage-one", "stream_options", {"include_usage": 1}, "stream_options.include_usage"),
    ("temperature-string", "temperature", "0.5", "temperature"),
    ("temperature-true", "temperature", True, "temperature"),
    ("temperature-list", "temperature", [0.5], "temperature"),
    ("top_p-string", "top_p", "1", "top_p"),
    ("top_p-false", "top_p", False, "top_p"),
    ("presence_penalty-string", "presence_penalty", "0", "presence_penalty"),
    ("presence_penalty-true", "presence_penalty", True, "presence_penalty"),
    ("frequency_penalty-object", "frequency_penalty", {}, "frequency_penalty"),
    *(
        (f"{field}-{name}", field, value, field)
        for field in ("max_tokens", "max_completion_tokens", "n")
        for name, value in (
            ("zero", 0),
            ("minus-one", -1),
            ("float", 1.5),
            ("whole-float", 10.0),
            ("true", True),
            ("false", False),
            ("string", "10"),
            ("list", [10]),
        )
    ),
    ("stop-number", "stop", 5, "stop"),
    ("stop-numbers", "stop", [1, 2], "stop"),
    ("stop-mixed", "stop", ["ok", 3], "stop"),
    ("stop-null-item", "stop", [None], "stop"),
    ("stop-object", "stop", {"a": 1}, "stop"),
    ("tools-object", "tools", {"type": "function"}, "tools"),
    ("tools-strings", "tools", ["get_weather"], "tools"),
    ("tools-string", "tools", "tools", "tools"),
    ("tools-numbers", "tools", [1], "tools"),
    ("tool_choice-number", "tool_choice", 5, "tool_choice"),
    ("tool_choice-true", "tool_choice", True, "tool_choice"),
    ("tool_choice-list", "tool_choice", ["auto"], "tool_choice"),
    ("response_format-string", "response_format", "json", "response_format"),
    ("response_format-list", "response_format", ["json_object"], "response_format"),
    ("response_format-true", "response_format", True, "response_format"),
    ("user-number", "user", 5, "user"),
    ("user-object", "user", {"id": 1}, "user"),
    ("user-true", "user", True, "user"),
    ("seed-float", "seed", 1.5, "seed"),
    ("seed-string", "seed", "1", "seed"),
    ("seed-true", "seed", True, "seed"),
    ("logprobs-string", "logprobs", "yes", "logprobs"),
    ("top_logprobs-float", "top_logprobs", 1.5, "top_logprobs"),
    ("parallel_tool_calls-string", "parallel_tool_calls", "no", "parallel_tool_calls"),
    ("logit_bias-list", "logit_bias", [1], "logit_bias"),
    ("metadata-string", "metadata", "x", "metadata"),
]

CHAT_WRONG_TYPES = [
    chat(id_, chat_body(**{field: value}), param=param) for id_, field, value, param in WRONG_TYPES
]
CHAT_WRONG_TYPES += [
    chat("messages-missing", chat_without("messages"), param="messages"),
    chat("max_tokens-2**64", spliced("max_tokens", b"18446744073709551616"), param="max_tokens"),
    chat("n-1e3", spliced("n", b"1e3"), param="n"),
    chat("model-escaped-nul", spliced("model", b'"up/gpt\\u0000"'), param="model"),
]

# --- bodies that are not one JSON object, and bodies over the limit ------------------------------
BAD_JSON = [
    ("empty", b""),
    ("whitespace", b"  \r\n\t "),
    ("null", b"null"),
    ("array", b"[]"),
    ("array-of-a-good-body", b"[" + chat_body() + b"]"),
    ("string", b'"hello"'),
    ("number", b"42"),
    ("true", b"true"),
    ("infinite-number", b"1e999"),
    ("truncated", chat_body()[:-7]),
    ("truncated-after-key", b'{"model": "up/gpt-4o-mini", "messages": ['),
    ("trailing-garbage", chat_body() + b" x"),
    ("two-objects", chat_body() + chat_body()),
    ("invalid-utf8-in-content", chat_body()[:-4] + b'\xff\xfe"}]}'),
    ("invalid-utf8-in-model", b'{"model": "up/\xc3\x28", "messages": [{"role": "user"}]}'),
    ("overlong-utf8", b'{"model": "up/\xc0\xaf", "messages": []}'),
    ("lone-surrogate", spliced("user", b'"\\ud800"')),
    ("nul-byte-in-string", b'{"model": "up/gpt\x00-4o-mini", "messages": []}'),
    ("nul-byte-between-tokens", b'{\x00"model": "up/gpt-4o-mini"}'),
    ("nul-bytes-only", b"\x00" * 64),
    ("utf8-bom", b"\xef\xbb\xbf" + chat_body()),
    ("utf16-body", chat_body().decode().encode("utf-16")),
    ("nan-literal", spliced("temperature", b"NaN")),
    ("infinity-literal", spliced("temperature", b"Infinity")),
    ("single-quotes", b"{'model': 'up/gpt-4o-mini'}"),
    ("comment", b"/* hi */" + chat_body()),
    ("nested-arrays-100k", nested(100_000)),
    ("nested-objects-100k", b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
    ("nested-100k-in-a-field", spliced("metadata", b'{"a":' * 100_000 + b"1" + b"}" * 100_000)),
    ("nested-2000-in-a-field", spliced("extra", nested(2000))),
    ("form-urlencoded", b"model=up%2Fgpt-4o-mini&messages=hi"),
]

CHAT_BAD_JSON = [chat(id_, body, param=None) for id_, body in BAD_JSON]

TOO_LARGE = [
    chat(
        "over-10MiB",
        lambda: (
            b'{"model": "up/gpt-4o-mini", "messages": [{"role": "user", "content": "'
            + b"x" * LIMIT
            + b'"}]}'
        ),
        status=413,
        code="request_too_large",
        heavy=True,
    ),
    chat(
        "over-10MiB-chunked",
        lambda: b"x" * (LIMIT + 1),
        status=413,
        code="request_too_large",
        chunked=True,
        heavy=True,
    ),
    chat(
        "20MiB-of-brackets",
        lambda: b"[" * (LIMIT * 2),
        status=413,
        code="request_too_large",
        chunked=True,
        heavy=True,
    ),
]

DECLARED = [
    # Content-Length alone says "too large": refused before a byte of the body is read
    RawCase(
        "chat-declared-20MiB",
        request_bytes("POST", CHAT, headers=[*AUTH.items(), ("Content-Length", str(2 * LIMIT))]),
        status=413,
        code="request_too_large",
        closed=None,
        max_s=2.0,
    ),
    RawCase(
        "chat-declared-limit-plus-one",
        request_bytes("POST", CHAT, headers=[*AUTH.items(), ("Content-Length", str(LIMIT + 1))]),
        status=413,
        code="request_too_large",
        closed=None,
        max_s=2.0,
    ),
    RawCase(
        "chat-declared-20MiB-expect-100-continue",
        request_bytes(
            "POST",
            CHAT,
            headers=[
                *AUTH.items(),
                ("Expect", "100-continue"),
                ("Content-Length", str(2 * LIMIT)),
            ],
        ),
        status=413,
        code="request_too_large",
        closed=None,
        max_s=2.0,
    ),
    RawCase(
        "chat-declared-20MiB-without-key",
        request_bytes("POST", CHAT, headers=[("Content-Length", str(2 * LIMIT))]),
        status=401,
        code="invalid_api_key",
        closed=None,
        max_s=2.0,
    ),
    RawCase(
        "admin-create-declared-1MiB",
        request_bytes(
            "POST", "/admin/clients", headers=[*ADMIN.items(), ("Content-Length", str(2**20))]
        ),
        status=413,
        code="request_too_large",
        closed=None,
        max_s=2.0,
    ),
]

CHAT_CASES = CHAT_WRONG_TYPES + CHAT_BAD_JSON + TOO_LARGE

# The same bodies without a valid client key: the fixed 401, whatever the body.
NO_KEY_HEADERS = {
    "no-key": (),
    "wrong-key": (("Authorization", "Bearer rg-not-a-key-0123456789abcdefghijklmnopq"),),
    "admin-secret-as-key": (("Authorization", f"Bearer {CANARY_ADMIN_SECRET}"),),
    "upstream-key-as-key": (("x-api-key", CANARY_UPSTREAM_KEY),),
}
NO_KEY_SAMPLE = [
    c
    for c in CHAT_CASES
    if c.id
    in {
        "chat-model-crlf",
        "chat-max_tokens-true",
        "chat-messages-string",
        "chat-empty",
        "chat-truncated",
        "chat-invalid-utf8-in-content",
        "chat-nested-arrays-100k",
        "chat-array",
        "chat-over-10MiB",
        "chat-over-10MiB-chunked",
    }
]
CHAT_NO_KEY = [
    Case(
        f"{c.id}-{who}",
        c.method,
        c.path,
        c.body,
        headers=(*headers, JSON),
        status=401,
        code="invalid_api_key",
        chunked=c.chunked,
        heavy=c.heavy,
    )
    for c in NO_KEY_SAMPLE
    for who, headers in NO_KEY_HEADERS.items()
]


@pytest.mark.parametrize("case", CHAT_CASES, ids=lambda c: c.id)
def test_a_bad_chat_body_is_refused_before_any_upstream_call(hostile: Hostile, case: Case) -> None:
    run_case(hostile, case)


@pytest.mark.parametrize("case", CHAT_NO_KEY, ids=lambda c: c.id)
def test_a_bad_chat_body_without_a_valid_key_gets_the_fixed_401(
    hostile: Hostile, case: Case
) -> None:
    run_case(hostile, case)


@pytest.mark.parametrize("case", DECLARED, ids=lambda c: c.id)
def test_a_body_declared_too_large_is_refused_before_it_is_read(
    hostile: Hostile, case: RawCase
) -> None:
    run_raw(hostile, case)


def test_a_deep_but_parseable_field_is_never_a_500(hostile: Hostile) -> None:
    """300 levels parse (orjson reads up to 1024) but cannot be written again (it writes up to
    254): an unknown field passes on untouched (SPEC §8a), so the body may be relayed (200) or
    refused (400), never a 500."""
    run_case(
        hostile,
        chat(
            "nested-300-in-an-unknown-field",
            spliced("extra", nested(300)),
            status=(200, 400),
            upstream_ok=True,
        ),
    )


# --- the admin API ------------------------------------------------------------------------------
ADMIN_BAD: list[tuple[str, bytes, Any]] = [
    # (id, body, param) -- each refused with 400 on create and on change
    ("name-number", b'{"name": 5}', "name"),
    ("name-empty", b'{"name": ""}', "name"),
    ("name-201-chars", orjson.dumps({"name": "n" * 201}), "name"),
    ("name-list", b'{"name": ["a"]}', "name"),
    ("rpm-zero", b'{"name": "h", "rpm": 0}', "rpm"),
    ("rpm-negative", b'{"name": "h", "rpm": -1}', "rpm"),
    ("rpm-string", b'{"name": "h", "rpm": "ten"}', "rpm"),
    ("rpm-float", b'{"name": "h", "rpm": 1.5}', "rpm"),
    ("rpm-2**63", b'{"name": "h", "rpm": 9223372036854775808}', "rpm"),
    ("rpm-2**64-1", b'{"name": "h", "rpm": 18446744073709551615}', "rpm"),
    ("tpm-2**63", b'{"name": "h", "tpm": 9223372036854775808}', "tpm"),
    ("tpm-object", b'{"name": "h", "tpm": {}}', "tpm"),
    ("budget-negative", b'{"name": "h", "monthly_budget_usd": -1}', "monthly_budget_usd"),
    ("budget-string", b'{"name": "h", "monthly_budget_usd": "lots"}', "monthly_budget_usd"),
    ("models-string", b'{"name": "h", "models": "fast"}', "models"),
    ("models-numbers", b'{"name": "h", "models": [1]}', "models.0"),
    ("models-nested", b'{"name": "h", "models": [["a"]]}', "models.0"),
    ("unknown-field", b'{"name": "h", "is_admin": true}', "is_admin"),
    ("not-an-object", b'[{"name": "h"}]', None),
    ("string", b'"h"', None),
    ("empty", b"", None),
    ("truncated", b'{"name": "h', None),
    ("invalid-utf8", b'{"name": "\xff\xfe"}', None),
    ("nul-byte", b'{"name": "a\x00b"}', None),
    ("nested-30k", nested(30_000), None),
]
ADMIN_CREATE_ONLY = [("name-missing", b"{}", "name"), ("name-null", b'{"name": null}', "name")]
ADMIN_PATCH_ONLY = [("name-null", b'{"name": null}', "name")]
PATCH_TARGET = "/admin/clients/{id}"


def admin_cases(method: str, path: str, table: list[tuple[str, bytes, Any]]) -> list[Case]:
    verb = "create" if method == "POST" else "change"
    cases = [
        Case(
            f"admin-{verb}-{id_}",
            method,
            path,
            body,
            headers=(*ADMIN.items(), JSON),
            status=400,
            code="invalid_request",
            param=param,
        )
        for id_, body, param in table
    ]
    cases.append(
        Case(
            f"admin-{verb}-over-64KiB",
            method,
            path,
            orjson.dumps({"name": "n" * ADMIN_LIMIT}),
            headers=(*ADMIN.items(), JSON),
            status=413,
            code="request_too_large",
        )
    )
    return cases


ADMIN_CREATE = admin_cases("POST", "/admin/clients", ADMIN_BAD + ADMIN_CREATE_ONLY)
ADMIN_CHANGE = admin_cases("PATCH", PATCH_TARGET, ADMIN_BAD + ADMIN_PATCH_ONLY)
ADMIN_WITHOUT_SECRET = [
    Case(
        f"{c.id}-{who}",
        c.method,
        c.path,
        c.body,
        headers=(*headers, JSON),
        status=403,
        code="forbidden",
    )
    for c in ADMIN_CREATE[:3] + ADMIN_CREATE[-3:] + ADMIN_CHANGE[-3:]
    for who, headers in {
        "no-secret": (),
        "wrong-secret": (("admin-secret", "not-the-secret"),),
        "client-key": tuple(AUTH.items()),
    }.items()
] + [
    Case(
        "admin-create-good-body-wrong-secret",
        "POST",
        "/admin/clients",
        b'{"name": "intruder"}',
        headers=(("admin-secret", CANARY_ADMIN_SECRET[:-1]), JSON),
        status=403,
        code="forbidden",
    )
]


@pytest.fixture(scope="module")
def patch_target(hostile: Hostile) -> str:
    """An issued client whose limits the PATCH cases try to change."""
    answer = hostile.call(
        "POST",
        "/admin/clients",
        headers={**ADMIN, "content-type": "application/json"},
        content=b'{"name": "patch-target", "rpm": 60}',
    )
    assert answer.status == 201, answer.text()
    return str(answer.json()["client"]["id"])


def clients_now(hostile: Hostile) -> Any:
    answer = hostile.call("GET", "/admin/clients", headers=ADMIN)
    assert answer.status == 200, answer.text()
    return answer.json()["data"]


@pytest.mark.parametrize(
    "case", ADMIN_CREATE + ADMIN_CHANGE + ADMIN_WITHOUT_SECRET, ids=lambda c: c.id
)
def test_a_bad_admin_body_is_refused_and_changes_nothing(
    hostile: Hostile, patch_target: str, case: Case
) -> None:
    before = clients_now(hostile)
    run_case(hostile, replace(case, path=case.path.format(id=patch_target)))
    assert clients_now(hostile) == before
