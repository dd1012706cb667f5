"""Every route against hostile credentials, paths, methods and query strings (SPEC §5, §7, §8).

- credentials: each route (client, open, admin, /keys/status) with no key, a wrong key, an empty
  or malformed Authorization, a 60 KB key, the admin secret or an upstream key presented as a
  client key, the client key presented as the admin secret: client routes answer the fixed 401,
  admin routes 403, open routes 200, and the right credential gets past authentication;
- paths (raw sockets, nothing normalised on the way): a 20 KB path, percent-encoded garbage
  (%00, %ff, %2e%2e/, overlong UTF-8), traversal (/../../etc/passwd, /static/../../), double
  slashes, each on its own route prefix: 404 (or 400 for bytes the parser refuses) in the error
  shape, never a 500 and never a file's content;
- methods a route does not have: 405 in the error shape;
- query strings of the admin routes: bad values are a 400 naming the parameter;
- the open pages (/, /status.json, /docs, /redoc, /openapi.json, the dashboard's files) and the
  admin reads carry no secret, with or without the admin secret;
- a secret sent by the caller inside a value the gateway echoes (a model name, a key id, a client
  id) does not come back in the answer (SPEC §8: no answer ever contains one).

Every case also checks: no upstream call, no canary in the answer or the log, no traceback."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.hostile.conftest import (
    ADMIN,
    ANY,
    AUTH,
    CANARY_ADMIN_SECRET,
    CANARY_CLIENT_KEY,
    CANARY_UPSTREAM_KEY,
    CANARY_UPSTREAM_KEY_2,
    MODEL,
    Case,
    Hostile,
    RawCase,
    request_bytes,
    run_case,
    run_raw,
)

CHAT = "/v1/chat/completions"
JSON = ("content-type", "application/json")

# (method, path, who may use it)
ROUTES: list[tuple[str, str, str]] = [
    ("POST", CHAT, "client"),
    ("POST", "/chat/completions", "client"),
    ("GET", "/models", "client"),
    ("POST", "/v1/messages", "client"),
    ("POST", "/v1/messages/count_tokens", "client"),
    ("POST", "/v1/responses", "client"),
    ("POST", "/v1beta/models/up/gpt-4o-mini:generateContent", "client"),
    ("POST", "/v1/models/up/gpt-4o-mini:streamGenerateContent", "client"),
    ("POST", "/v1beta/models/up/gpt-4o-mini:countTokens", "client"),
    ("POST", "/v1/embeddings", "client"),
    ("POST", "/embeddings", "client"),
    ("POST", "/v1beta/models/up/gpt-4o-mini:embedContent", "client"),
    ("POST", "/v1/models/up/gpt-4o-mini:batchEmbedContents", "client"),
    ("GET", "/v1beta/models", "client"),
    ("GET", "/v1/models", "client"),
    ("POST", "/v1/audio/transcriptions", "client"),
    ("POST", "/audio/transcriptions", "client"),
    ("POST", "/chat", "client"),
    ("POST", "/chat/json", "client"),
    ("POST", "/v1/generate", "client"),
    ("POST", "/ask", "client"),
    ("POST", "/upload", "client"),
    ("GET", "/keys/status", "client-or-admin"),
    ("GET", "/health", "open"),
    ("GET", "/", "open"),
    ("GET", "/status.json", "open"),
    ("GET", "/docs", "open"),
    ("GET", "/redoc", "open"),
    ("GET", "/openapi.json", "open"),
    ("GET", "/static/dashboard.js", "open"),
    ("GET", "/metrics", "admin"),
    ("GET", "/current-key", "admin"),
    ("GET", "/admin/keys", "admin"),
    ("POST", "/admin/keys/up:00000000/enable", "admin"),
    ("POST", "/admin/keys/up:00000000/disable", "admin"),
    ("GET", "/admin/clients", "admin"),
    ("POST", "/admin/clients", "admin"),
    ("PATCH", "/admin/clients/nope", "admin"),
    ("DELETE", "/admin/clients/nope", "admin"),
    ("GET", "/admin/usage", "admin"),
    ("GET", "/admin/failures", "admin"),
    ("GET", "/admin/dashboard.json", "admin"),
]

CREDENTIALS: dict[str, tuple[tuple[str, str], ...]] = {
    "none": (),
    "wrong-bearer": (("Authorization", "Bearer rg-wrong-0123456789abcdefghijklmnopqrstuvw"),),
    "wrong-x-api-key": (("x-api-key", "rg-wrong-0123456789abcdefghijklmnopqrstuvw"),),
    "bearer-without-value": (("Authorization", "Bearer"),),
    "basic-scheme-with-the-key": (("Authorization", f"Basic {CANARY_CLIENT_KEY}"),),
    "key-with-a-suffix": (("Authorization", f"Bearer {CANARY_CLIENT_KEY}x"),),
    "key-prefix-only": (("Authorization", f"Bearer {CANARY_CLIENT_KEY[:-1]}"),),
    "60KB-bearer": (("Authorization", "Bearer " + "k" * 60_000),),
    "upstream-key-as-bearer": (("Authorization", f"Bearer {CANARY_UPSTREAM_KEY}"),),
    "admin-secret-as-bearer": (("Authorization", f"Bearer {CANARY_ADMIN_SECRET}"),),
    "admin-secret-header": (("admin-secret", CANARY_ADMIN_SECRET),),
    "wrong-admin-secret": (("admin-secret", CANARY_ADMIN_SECRET[:-1]),),
    "client-key-as-admin-secret": (("admin-secret", CANARY_CLIENT_KEY),),
    "client-key": (("Authorization", f"Bearer {CANARY_CLIENT_KEY}"),),
    "client-key-x-api-key": (("x-api-key", CANARY_CLIENT_KEY),),
}
IS_CLIENT = {"client-key", "client-key-x-api-key"}
IS_ADMIN = {"admin-secret-header", "admin-secret-as-bearer"}


def expected(who: str, cred: str) -> tuple[tuple[int, ...], str | None]:
    """The statuses a route answers a credential with, and the error code when refused."""
    if who == "open":
        return (200,), None
    if who == "admin":
        if cred in IS_ADMIN:  # past the check: the route's own answer, never 401/403/5xx
            return (200, 201, 400, 404), None
        return (403,), "forbidden"
    if cred in IS_CLIENT or (who == "client-or-admin" and cred in IS_ADMIN):
        return (200, 400), None  # POST /v1/chat/completions without a body: 400
    return (401,), "invalid_api_key"


AUTH_CASES = [
    Case(
        f"{method}-{path}-{cred}",
        method,
        path,
        headers=headers,
        status=expected(who, cred)[0],
        code=expected(who, cred)[1],
    )
    for method, path, who in ROUTES
    for cred, headers in CREDENTIALS.items()
]


@pytest.mark.parametrize("case", AUTH_CASES, ids=lambda c: c.id)
def test_every_route_answers_hostile_credentials_as_the_spec_says(
    hostile: Hostile, case: Case
) -> None:
    run_case(hostile, case)


# credentials no HTTP library would send: on raw sockets
RAW_CREDENTIALS: dict[str, bytes] = {
    "empty-bearer": b"Authorization: Bearer ",
    "bearer-tab-key": b"Authorization: Bearer\t" + CANARY_CLIENT_KEY.encode(),
    "latin1-bytes-bearer": b"Authorization: Bearer \xe9\xff\xfe",
    "utf8-bytes-x-api-key": "x-api-key: cl\u00e9-\u2603".encode(),
    "latin1-admin-secret": b"admin-secret: \xe9\xff",
    "two-authorizations-wrong-first": b"Authorization: Bearer wrong\r\nAuthorization: Bearer "
    + CANARY_CLIENT_KEY.encode(),
}
RAW_ROUTES = [
    route
    for route in ROUTES
    if route[:2]
    in {
        ("POST", CHAT),
        ("GET", "/v1/models"),
        ("GET", "/keys/status"),
        ("GET", "/health"),
        ("GET", "/metrics"),
        ("GET", "/admin/clients"),
    }
]


def raw_expected(who: str, cred: str) -> tuple[tuple[int, ...], str | None]:
    statuses, code = expected(who, "none")
    if cred.startswith("two-") and who in ("client", "client-or-admin"):
        return (400, 401), None  # the wrong one, or refused as ambiguous; never served
    return statuses, code


RAW_AUTH_CASES = [
    RawCase(
        f"{method}-{path}-{cred}",
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
        + header
        + b"\r\nContent-Length: 0\r\n\r\n",
        status=raw_expected(who, cred)[0],
        code=raw_expected(who, cred)[1],
        closed=None,
    )
    for method, path, who in RAW_ROUTES
    for cred, header in RAW_CREDENTIALS.items()
]


@pytest.mark.parametrize("case", RAW_AUTH_CASES, ids=lambda c: c.id)
def test_credentials_no_library_would_send_are_refused_as_the_spec_says(
    hostile: Hostile, case: RawCase
) -> None:
    run_raw(hostile, case)


# --- paths on raw sockets ---------------------------------------------------------------------
TRAVERSAL = [
    "/../../etc/passwd",
    "/static/../../etc/passwd",
    "/static/../../pyproject.toml",
    "/static/..%2f..%2fetc%2fpasswd",
    "/static/%2e%2e/%2e%2e/etc/passwd",
    "/static/%2e%2e%2f%2e%2e%2fpyproject.toml",
    "/static/dashboard.js/../../../etc/passwd",
    "/static/..%5c..%5cwindows%5cwin.ini",
    "/static/%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
    "/static/dashboard.html",
    "/static/../relaygate-data/relaygate.db",
    "/static//etc/passwd",
    "/static/dashboard.js%00.png",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/%2fetc%2fpasswd",
    "/v1/models/../../etc/passwd",
    "/v1/models/../../health",
    "/admin/../metrics",
    "/web/dashboard.html",
    "/relaygate/web/dashboard.js",
]
GARBAGE = [
    "/%00",
    "/%ff",
    "/%ff%fe%fd",
    "/%",
    "/%zz",
    "/%u002e%u002e/",
    "/%0d%0aSet-Cookie:%20x=1",
    "/v1/models%00",
    "/health%20",
    "/health%0a",
    "/v1/chat/completions%00",
    "/%e2%80%ae/",
    "/" + "%41" * 3000,
]
DOUBLE_SLASHES = ["//health", "//v1/models", "/v1//models", "///etc/passwd", "//admin/keys"]
LONG = ["/" + "a" * 20_000, "/v1/" + "b" * 20_000, "/static/" + "c" * 20_000]


def path_case(id_: str, path: str, method: str = "GET", **kw: Any) -> RawCase:
    kw.setdefault("status", 404)
    kw.setdefault("code", "not_found" if kw["status"] == 404 else None)
    headers = [("Connection", "close"), ("Authorization", f"Bearer {CANARY_CLIENT_KEY}")]
    return RawCase(id_, request_bytes(method, path, headers=headers), closed=None, **kw)


PATHS = (
    [path_case(f"traversal{p}", p) for p in TRAVERSAL]
    + [path_case(f"garbage{p[:40]}", p) for p in GARBAGE]
    + [path_case(f"double-slash{p}", p) for p in DOUBLE_SLASHES]
    + [path_case(f"20KB-path-{p[:5]}", p) for p in LONG]
    + [
        path_case("post-chat-with-double-slash", "//v1/chat/completions", "POST"),
        path_case("post-chat-traversal", "/v1/x/../chat/completions", "POST"),
        path_case("post-chat-trailing-nul", "/v1/chat/completions%00", "POST"),
        path_case("admin-client-id-nul", "/admin/clients/%00", status=(404, 405), code=None),
        path_case("raw-byte-ff", "/\xff", status=400, code="invalid_request"),
        path_case("raw-nul", "/\x00", status=400, code="invalid_request"),
        path_case("raw-tab", "/a\tb", status=400, code="invalid_request"),
        path_case("raw-del", "/a\x7fb", status=400, code="invalid_request"),
        path_case("70KB-path", "/" + "a" * 70_000, status=431, code="request_headers_too_large"),
    ]
)


@pytest.mark.parametrize("case", PATHS, ids=lambda c: c.id)
def test_a_hostile_path_is_a_404_in_the_error_shape_never_a_file(
    hostile: Hostile, case: RawCase
) -> None:
    run_raw(hostile, case)


# --- methods ------------------------------------------------------------------------------------
METHODS = [
    Case(
        f"{m}-{p}",
        m,
        p,
        headers=(*AUTH.items(), *ADMIN.items()),
        status=405,
        code="method_not_allowed",
    )
    for m, p in [
        ("GET", CHAT),
        ("PUT", CHAT),
        ("DELETE", CHAT),
        ("GET", "/v1/messages"),
        ("PUT", "/v1/responses"),
        ("GET", "/v1/messages/count_tokens"),
        ("GET", "/v1beta/models/up/gpt-4o-mini:generateContent"),
        ("GET", "/v1/embeddings"),
        ("PUT", "/embeddings"),
        ("GET", "/v1/models/up/gpt-4o-mini:batchEmbedContents"),
        ("POST", "/health"),
        ("DELETE", "/"),
        ("PATCH", "/v1/models"),
        ("PUT", "/status.json"),
        ("POST", "/metrics"),
        ("PUT", "/admin/keys"),
        ("GET", "/admin/keys/up:00000000/enable"),
        ("TRACE", "/health"),
    ]
] + [
    Case("FOO-/health", "FOO", "/health", status=(400, 405)),
    Case("M-SEARCH-/health", "M-SEARCH", "/health", status=(400, 405)),
]


@pytest.mark.parametrize("case", METHODS, ids=lambda c: c.id)
def test_a_method_a_route_does_not_have_is_a_405_in_the_error_shape(
    hostile: Hostile, case: Case
) -> None:
    run_case(hostile, case)


# --- query strings of the admin routes --------------------------------------------------------
def admin_get(id_: str, path: str, status: int = 400, param: Any = ANY) -> Case:
    return Case(
        id_,
        "GET",
        path,
        headers=tuple(ADMIN.items()),
        status=status,
        code="invalid_request" if status == 400 else None,
        param=param,
    )


QUERIES = [
    admin_get("usage-by-garbage", "/admin/usage?by=%00%ff", param="by"),
    admin_get("usage-by-10k", "/admin/usage?by=" + "x" * 10_000, param="by"),
    admin_get("usage-by-sql", "/admin/usage?by=client%3B%20DROP%20TABLE%20ledger", param="by"),
    admin_get("usage-day-garbage", "/admin/usage?day=yesterday", param="day"),
    admin_get("usage-day-sql-like", "/admin/usage?day=%25", param="day"),
    admin_get("usage-day-10k", "/admin/usage?day=" + "9" * 10_000, param="day"),
    admin_get("usage-month-garbage", "/admin/usage?month=%00", param="month"),
    admin_get("usage-day-and-month", "/admin/usage?day=2026-01-01&month=2026-01"),
    admin_get("failures-limit-word", "/admin/failures?limit=all", param="limit"),
    admin_get("failures-limit-float", "/admin/failures?limit=1.5", param="limit"),
    admin_get("failures-limit-1e400", "/admin/failures?limit=1e400", param="limit"),
    admin_get("failures-limit-huge", "/admin/failures?limit=" + "9" * 30, status=200),
    admin_get("failures-limit-negative", "/admin/failures?limit=-5", status=200),
    admin_get("usage-repeated-param", "/admin/usage?" + "by=client&" * 2000, status=200),
]


@pytest.mark.parametrize("case", QUERIES, ids=lambda c: c.id)
def test_a_bad_admin_query_is_a_400_naming_the_parameter(hostile: Hostile, case: Case) -> None:
    run_case(hostile, case)


# --- reads that must never show a secret ------------------------------------------------------
READS = (
    [
        Case(f"{path}-{who}", "GET", path, headers=headers, status=200)
        for path in (
            "/",
            "/status.json",
            "/docs",
            "/redoc",
            "/openapi.json",
            "/static/dashboard.js",
            "/static/charts.js",
            "/static/dashboard.css",
            "/health",
        )
        for who, headers in {"anyone": (), "admin": tuple(ADMIN.items())}.items()
    ]
    + [
        Case(f"{path}-admin", "GET", path, headers=tuple(ADMIN.items()), status=200)
        for path in (
            "/admin/keys",
            "/admin/clients",
            "/admin/usage",
            "/admin/failures",
            "/admin/dashboard.json",
            "/metrics",
            "/keys/status",
        )
    ]
    + [
        Case("/v1/models-client", "GET", "/v1/models", headers=tuple(AUTH.items()), status=200),
        Case("/keys/status-client", "GET", "/keys/status", headers=tuple(AUTH.items()), status=200),
    ]
)


@pytest.mark.parametrize("case", READS, ids=lambda c: c.id)
def test_no_page_or_read_shows_a_secret(hostile: Hostile, case: Case) -> None:
    answer = run_case(hostile, case)
    assert answer.body, "an empty answer"


# --- secrets the caller put in a value that is echoed ----------------------------------------
def chat_model(model: str) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})


REFLECTED = [
    Case(
        "chat-model-is-the-upstream-key",
        "POST",
        CHAT,
        chat_model(CANARY_UPSTREAM_KEY),
        headers=(*AUTH.items(), JSON),
        status=404,
        code="model_not_found",
    ),
    Case(
        "chat-model-is-the-client-key",
        "POST",
        CHAT,
        chat_model(CANARY_CLIENT_KEY),
        headers=(*AUTH.items(), JSON),
        status=404,
        code="model_not_found",
    ),
    Case(
        "chat-model-names-the-admin-secret",
        "POST",
        CHAT,
        chat_model(f"nowhere/{CANARY_ADMIN_SECRET}"),
        headers=(*AUTH.items(), JSON),
        status=404,
        code="model_not_found",
    ),
    Case(
        "enable-a-key-id-that-is-the-upstream-key",
        "POST",
        f"/admin/keys/{CANARY_UPSTREAM_KEY_2}/enable",
        headers=tuple(ADMIN.items()),
        status=404,
        code="not_found",
    ),
    Case(
        "change-a-client-id-that-is-the-admin-secret",
        "PATCH",
        f"/admin/clients/{CANARY_ADMIN_SECRET}",
        b'{"rpm": 5}',
        headers=(*ADMIN.items(), JSON),
        status=404,
        code="not_found",
    ),
    Case(
        "revoke-a-client-id-that-is-the-client-key",
        "DELETE",
        f"/admin/clients/{CANARY_CLIENT_KEY}",
        headers=tuple(ADMIN.items()),
        status=404,
        code="not_found",
    ),
]


@pytest.mark.parametrize("case", REFLECTED, ids=lambda c: c.id)
def test_a_secret_in_an_echoed_value_does_not_come_back(hostile: Hostile, case: Case) -> None:
    run_case(hostile, case)


def test_the_gateway_still_serves_after_the_hostile_routes(hostile: Hostile) -> None:
    answer = hostile.call(
        "POST",
        CHAT,
        headers={**AUTH, "content-type": "application/json"},
        content=chat_model(MODEL),
    )
    assert answer.status == 200, answer.text()
