"""SPEC §8 end to end (issue 2): every error a client can see is JSON in one shape with the right
status, never a traceback; upstream failures become 502 / 504; in-stream errors are one SSE event
and no [DONE]; the request's own 4xx is returned, not retried; 401 is one fixed body."""

from __future__ import annotations

import http.client
import json
import time
from collections import Counter
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import openai_provider
from tests.fakes.openai_upstream import Reply, errors

MODEL = "up/gpt-4o-mini"
MSG = [{"role": "user", "content": "hello errors"}]
FAST = {"max_attempts": 2, "backoff_base_s": 0.01, "backoff_max_s": 0.02}


def start(live_gateway, fake, keys=("sk-up-a",), *, server=None, **provider):
    provider.setdefault("timeout_s", 0.5)
    config: dict[str, Any] = {
        "providers": {"up": openai_provider(fake, list(keys), **provider)},
        "retries": FAST,
    }
    if server:
        config["server"] = server
    return live_gateway(config)


def post(gw, payload: Any = None, *, content: Any = None, headers=None, stream=False):
    if content is None and payload is None:
        payload = {"model": MODEL, "messages": MSG, "stream": stream}
    return httpx.post(
        gw.v1 + "/chat/completions",
        json=payload if content is None else None,
        content=content,
        headers=gw.headers(**(headers or {})),
        timeout=10,
    )


def assert_error(resp: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The SPEC §8 shape: JSON {"error": {message, type, code, param}} and nothing else."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert "Traceback" not in resp.text and 'File "' not in resp.text
    body = resp.json()
    assert list(body) == ["error"]
    err = body["error"]
    assert set(err) == {"message", "type", "code", "param"}
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    if code is not None:
        assert err["code"] == code, err
    return err


# --- the request's own faults -----------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"", b'{"messages": [', b"\xff\xfe\x00", b"{'single': 'quotes'}"],
    ids=["garbage", "empty", "truncated", "not-utf8", "python-repr"],
)
def test_bad_json_is_400(live_gateway, fake_openai, content):
    gw = start(live_gateway, fake_openai)
    err = assert_error(post(gw, content=content), 400)
    assert err["type"] == "invalid_request_error"
    assert fake_openai.calls() == []


@pytest.mark.parametrize("payload", [[1, 2], "a string", 42, None, True])
def test_json_that_is_not_an_object_is_400(live_gateway, fake_openai, payload):
    gw = start(live_gateway, fake_openai)
    err = assert_error(post(gw, content=json.dumps(payload).encode()), 400)
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "payload",
    [
        {"model": MODEL},
        {"model": MODEL, "messages": []},
        {"model": MODEL, "messages": None},
        {"model": MODEL, "messages": "hello"},
        {"model": MODEL, "messages": {"role": "user"}},
    ],
    ids=["missing", "empty", "null", "string", "object"],
)
def test_missing_or_empty_messages_is_400(live_gateway, fake_openai, payload):
    gw = start(live_gateway, fake_openai)
    err = assert_error(post(gw, payload), 400)
    assert err["type"] == "invalid_request_error" and err["param"] == "messages"
    assert fake_openai.calls() == []


def test_model_that_is_not_a_string_is_400(live_gateway, fake_openai):
    gw = start(live_gateway, fake_openai)
    err = assert_error(post(gw, {"model": 7, "messages": MSG}), 400)
    assert err["param"] == "model"


def test_sdk_sees_bad_request_error(live_gateway, fake_openai):
    gw = start(live_gateway, fake_openai)
    with (
        openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as client,
        pytest.raises(openai.BadRequestError) as caught,
    ):
        client.chat.completions.create(model=MODEL, messages=[])
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == "messages"


# --- 413 ---------------------------------------------------------------------------------------


def _big_payload(size: int) -> bytes:
    text = "x" * size
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": text}]}).encode()


def test_body_over_the_limit_is_413(live_gateway, fake_openai):
    gw = start(live_gateway, fake_openai, server={"max_body_bytes": 2048})
    small = post(gw, content=_big_payload(1500))
    assert small.status_code == 200
    err = assert_error(post(gw, content=_big_payload(3000)), 413, "request_too_large")
    assert "2048" in err["message"]
    assert len(fake_openai.calls()) == 1


def test_chunked_body_without_content_length_over_the_limit_is_413(live_gateway, fake_openai):
    gw = start(live_gateway, fake_openai, server={"max_body_bytes": 2048})
    payload = _big_payload(20_000)

    def pieces():
        for i in range(0, len(payload), 1000):
            yield payload[i : i + 1000]

    resp = post(gw, content=pieces())
    assert "content-length" not in resp.request.headers
    assert resp.request.headers["transfer-encoding"] == "chunked"
    assert_error(resp, 413, "request_too_large")
    assert fake_openai.calls() == []


def test_chunked_body_under_the_limit_is_served(live_gateway, fake_openai):
    gw = start(live_gateway, fake_openai, server={"max_body_bytes": 2048})
    payload = _big_payload(1000)
    resp = post(gw, content=iter([payload[:500], payload[500:]]))
    assert resp.status_code == 200, resp.text


# --- 404 ---------------------------------------------------------------------------------------


def test_unknown_model_is_404_model_not_found(live_gateway, fake_openai):
    gw = start(live_gateway, fake_openai)
    err = assert_error(post(gw, {"model": "nope/nothing", "messages": MSG}), 404)
    assert err["code"] == "model_not_found" and err["param"] == "model"
    assert "/v1/models" in err["message"]
    with (
        openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as client,
        pytest.raises(openai.NotFoundError) as caught,
    ):
        client.chat.completions.create(model="no-such-model-anywhere", messages=MSG)
    assert caught.value.code == "model_not_found"
    assert fake_openai.calls() == []


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/nothing-here", 404),
        ("POST", "/no/such/route", 404),
        ("GET", "/v1/chat/completions", 405),
        ("DELETE", "/health", 405),
    ],
)
def test_unknown_routes_and_methods_answer_in_the_spec_shape(
    live_gateway, fake_openai, method, path, status
):
    gw = start(live_gateway, fake_openai)
    resp = httpx.request(method, gw.base + path, headers=gw.headers(), timeout=10)
    assert_error(resp, status)
    assert resp.headers["x-request-id"].startswith("req_")


# --- 401: one fixed body whatever the reason ------------------------------------------------------

AUTH_VARIANTS = [
    {},
    {"Authorization": "Bearer rg-wrong-key-0000000000000000000000000000000"},
    {"Authorization": "Bearer "},
    {"Authorization": "Bearer"},
    {"Authorization": "Basic dXNlcjpwYXNz"},
    {"Authorization": "Token rg-wrong"},
    {"Authorization": "garbage"},
    {"x-api-key": "rg-wrong-key"},
    {"x-api-key": ""},
    {"x-api-key": "   "},
    {"Authorization": "Bearer nope", "x-api-key": "nope-too"},
]


def _raw(
    port: int, method: str, path: str, headers: dict[str, str], body: bytes | None = None
) -> tuple[int, bytes]:
    """http.client sends header values as given (httpx refuses e.g. a trailing space)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_401_is_one_fixed_body_for_every_reason(live_gateway, fake_openai):
    gw = start(live_gateway, fake_openai)
    bodies = set()
    for headers in AUTH_VARIANTS:
        for payload in ({"model": MODEL, "messages": MSG}, {"messages": []}):
            raw = json.dumps(payload).encode()
            status, body = _raw(gw.server.port, "POST", "/v1/chat/completions", headers, raw)
            assert status == 401, (headers, body)
            bodies.add(body)
        status, body = _raw(gw.server.port, "GET", "/v1/models", headers)
        assert status == 401
        bodies.add(body)
    bad_json = httpx.post(gw.v1 + "/chat/completions", content=b"{nope")
    assert_error(bad_json, 401, "invalid_api_key")  # auth comes before the body is read
    bodies.add(bad_json.content)
    assert len(bodies) == 1, bodies
    assert fake_openai.calls() == []


def test_both_header_forms_accept_the_right_key(live_gateway, fake_openai):
    gw = start(live_gateway, fake_openai)
    for headers in (
        {"Authorization": f"Bearer {gw.key}"},
        {"authorization": f"bearer {gw.key}"},
        {"x-api-key": gw.key},
    ):
        resp = httpx.post(
            gw.v1 + "/chat/completions", json={"model": MODEL, "messages": MSG}, headers=headers
        )
        assert resp.status_code == 200, (headers, resp.text)


def test_sdk_sees_authentication_error(live_gateway, fake_openai):
    gw = start(live_gateway, fake_openai)
    with (
        openai.OpenAI(base_url=gw.v1, api_key="rg-wrong", max_retries=0) as client,
        pytest.raises(openai.AuthenticationError) as caught,
    ):
        client.chat.completions.create(model=MODEL, messages=MSG)
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"


# --- upstream failures ----------------------------------------------------------------------------


def test_upstream_500_is_502_after_the_retries(live_gateway, fake_openai):
    fake_openai.default = Reply(status=500, error=errors.server_error())
    gw = start(live_gateway, fake_openai)
    resp = post(gw)
    err = assert_error(resp, 502, "upstream_error")
    assert resp.headers["x-relaygate-attempts"] == "2"
    assert len(fake_openai.calls()) == 2
    assert "sk-up-a" not in resp.text
    with (
        openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as client,
        pytest.raises(openai.InternalServerError) as caught,
    ):
        client.chat.completions.create(model=MODEL, messages=MSG)
    assert caught.value.status_code == 502
    assert err["type"] == "upstream_error"


def test_upstream_500_then_success_is_200_on_the_second_attempt(live_gateway, fake_openai):
    fake_openai.script("sk-up-a", Reply(status=500), Reply())
    gw = start(live_gateway, fake_openai)
    resp = post(gw)
    assert resp.status_code == 200 and resp.headers["x-relaygate-attempts"] == "2"


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_hang_is_504(live_gateway, fake_openai, stream):
    fake_openai.default = Reply(hang=True)
    gw = start(live_gateway, fake_openai, timeout_s=0.3)
    started = time.monotonic()
    resp = post(gw, stream=stream)
    assert time.monotonic() - started < 2.5
    assert_error(resp, 504, "upstream_timeout")
    assert resp.headers["x-relaygate-attempts"] == "2"
    assert len(fake_openai.calls()) == 2


def test_stream_that_sends_headers_but_no_chunk_is_504(live_gateway, fake_openai):
    fake_openai.default = Reply(first_chunk_delay_s=5)
    gw = start(live_gateway, fake_openai, timeout_s=0.3)
    started = time.monotonic()
    resp = post(gw, stream=True)
    assert time.monotonic() - started < 2.5
    assert_error(resp, 504, "upstream_timeout")


def test_context_length_exceeded_is_returned_and_not_retried(live_gateway, fake_openai):
    fake_openai.default = Reply(status=400, error=errors.context_length())
    gw = start(live_gateway, fake_openai, ["sk-up-a", "sk-up-b"])
    resp = post(gw)
    err = assert_error(resp, 400, "context_length_exceeded")
    assert err["param"] == "messages" and err["type"] == "invalid_request_error"
    assert "maximum context length" in err["message"]
    assert len(fake_openai.calls()) == 1
    with (
        openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as client,
        pytest.raises(openai.BadRequestError) as caught,
    ):
        client.chat.completions.create(model=MODEL, messages=MSG, stream=True)
    assert caught.value.code == "context_length_exceeded"
    assert len(fake_openai.calls()) == 2


# --- errors inside a stream -------------------------------------------------------------------


def _sse_events(raw: bytes) -> list[bytes]:
    return [e for e in raw.split(b"\n\n") if e.strip()]


def _raw_stream(gw) -> tuple[httpx.Response, bytes]:
    with httpx.stream(
        "POST",
        gw.v1 + "/chat/completions",
        headers=gw.headers(),
        json={"model": MODEL, "messages": MSG, "stream": True},
        timeout=10,
    ) as resp:
        return resp, resp.read()


def _assert_ends_with_one_error_event(raw: bytes, code: str) -> dict[str, Any]:
    assert b"[DONE]" not in raw
    assert b"Traceback" not in raw
    events = _sse_events(raw)
    errors_seen = [e for e in events if b'"error"' in e]
    assert len(errors_seen) == 1 and errors_seen[0] == events[-1]
    assert events[-1].startswith(b"data: ")
    body = json.loads(events[-1][len(b"data: ") :])
    assert list(body) == ["error"]
    assert set(body["error"]) == {"message", "type", "code", "param"}
    assert body["error"]["code"] == code
    return body["error"]


def test_in_stream_error_is_one_error_event_then_the_end(live_gateway, fake_openai):
    # the delay makes sure the first chunks reached the client before the error
    fake_openai.default = Reply(text="a b c d e", inband_error_after=2, chunk_delay_s=0.05)
    gw = start(live_gateway, fake_openai, ["sk-up-a", "sk-up-b"])
    resp, raw = _raw_stream(gw)
    assert resp.status_code == 200
    events = _sse_events(raw)
    contents = [json.loads(e[6:])["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert contents == ["", "a", " b"]  # what the client got before the failure stands
    err = _assert_ends_with_one_error_event(raw, "upstream_error")
    assert "sk-up" not in err["message"]
    assert len(fake_openai.calls()) == 1  # bytes reached the client: no retry


def test_sdk_raises_api_error_on_the_in_stream_error(live_gateway, fake_openai):
    fake_openai.default = Reply(text="a b c d e", inband_error_after=2, chunk_delay_s=0.05)
    gw = start(live_gateway, fake_openai)
    got: list[str] = []
    with openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as client:
        stream = client.chat.completions.create(model=MODEL, messages=MSG, stream=True)
        with pytest.raises(openai.APIError) as caught:
            for chunk in stream:
                got.append(chunk.choices[0].delta.content or "")
    assert "".join(got) == "a b"
    assert "mid-stream" in caught.value.message


def test_stream_cut_without_done_is_one_error_event(live_gateway, fake_openai):
    fake_openai.default = Reply(text="a b c d e", cut_after=3, chunk_delay_s=0.05)
    gw = start(live_gateway, fake_openai)
    resp, raw = _raw_stream(gw)
    assert resp.status_code == 200
    _assert_ends_with_one_error_event(raw, "upstream_error")


def test_stream_going_silent_is_one_timeout_event(live_gateway, fake_openai):
    fake_openai.default = Reply(text="a b c", chunk_delay_s=3)
    gw = start(live_gateway, fake_openai, stream_idle_timeout_s=0.3)
    started = time.monotonic()
    resp, raw = _raw_stream(gw)
    assert time.monotonic() - started < 2
    assert resp.status_code == 200
    _assert_ends_with_one_error_event(raw, "upstream_timeout")


def test_error_before_the_first_byte_of_a_stream_is_retried_on_another_key(
    live_gateway, fake_openai
):
    fake_openai.script("sk-up-a", Reply(inband_error_first=True))
    gw = start(live_gateway, fake_openai, ["sk-up-a", "sk-up-b"], key_strategy="round_robin")
    with openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=MSG, stream=True
        )
        chunks = list(raw.parse())
    assert raw.headers["x-relaygate-attempts"] == "2"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Echo: hello errors"
    )
    assert Counter(c.key for c in fake_openai.calls()) == {"sk-up-a": 1, "sk-up-b": 1}


def test_every_key_failing_before_the_first_byte_is_a_plain_502(live_gateway, fake_openai):
    fake_openai.default = Reply(inband_error_first=True)
    gw = start(live_gateway, fake_openai, ["sk-up-a", "sk-up-b"])
    resp = post(gw, stream=True)
    assert_error(resp, 502, "upstream_error")
    assert len(fake_openai.calls()) == 2


def test_an_upstream_error_message_never_shows_the_upstream_key(live_gateway, fake_openai):
    leaky = {
        "error": {
            "message": "Invalid parameter for key sk-up-a: 'temperature' must be <= 2",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": "invalid_value",
        }
    }
    fake_openai.default = Reply(status=400, error=leaky)
    gw = start(live_gateway, fake_openai)
    resp = post(gw)
    err = assert_error(resp, 400, "invalid_value")
    assert "sk-up-a" not in resp.text and "temperature" in err["message"]


def test_parameter_validation_errors_answer_in_the_spec_shape(live_gateway, fake_openai):
    gw = live_gateway(
        {
            "providers": {"up": openai_provider(fake_openai, ["sk-up-a"])},
            "admin_secret": "admin-secret-for-errors-0123",
        }
    )
    resp = httpx.get(
        gw.base + "/admin/failures?limit=lots",
        headers={"admin-secret": "admin-secret-for-errors-0123"},
    )
    err = assert_error(resp, 400)
    assert err["type"] == "invalid_request_error" and err["param"] == "limit"


def test_an_oversized_event_mid_stream_is_one_error_event(live_gateway, fake_openai):
    fake_openai.default = Reply(text="a b c d e", oversized_after=2, chunk_delay_s=0.05)
    gw = start(live_gateway, fake_openai)
    resp, raw = _raw_stream(gw)
    assert resp.status_code == 200
    _assert_ends_with_one_error_event(raw, "upstream_error")
    assert len(raw) < 10_000  # the oversized event itself never reaches the client


def test_the_admin_secret_is_not_a_client_key(live_gateway, fake_openai):
    secret = "admin-secret-for-errors-0123"
    gw = live_gateway(
        {"providers": {"up": openai_provider(fake_openai, ["sk-up-a"])}, "admin_secret": secret}
    )
    for headers in ({"Authorization": f"Bearer {secret}"}, {"x-api-key": secret}):
        resp = httpx.post(
            gw.v1 + "/chat/completions", json={"model": MODEL, "messages": MSG}, headers=headers
        )
        assert_error(resp, 401, "invalid_api_key")
    assert fake_openai.calls() == []


@pytest.mark.parametrize(
    "fields",
    [
        {"stream": True, "stream_options": "yes"},
        {"stream": True, "stream_options": [1, 2]},
        {"stream": "yes"},
        {"stream": 1},
        {"stream": True, "stream_options": {"include_usage": "yes"}},
    ],
    ids=["options-string", "options-list", "stream-string", "stream-int", "usage-string"],
)
def test_malformed_stream_fields_are_400(live_gateway, fake_openai, fields):
    gw = start(live_gateway, fake_openai)
    err = assert_error(post(gw, {"model": MODEL, "messages": MSG, **fields}), 400)
    assert err["type"] == "invalid_request_error"
    assert err["param"] in {"stream", "stream_options", "stream_options.include_usage"}
    assert fake_openai.calls() == []
