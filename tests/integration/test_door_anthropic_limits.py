"""The Anthropic Messages front door end to end, the other half (SPEC §6, §7a, §8, §9): errors in
Anthropic's shape as the official SDK's exception classes, client rate limits, allowed models and
budgets (the reservation reads the body's own `max_tokens`), upstream failures before and during a
stream, and the ledger row and answer headers of each call; over every upstream kind."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import pytest

from relaygate.auth.clients import static_id
from tests.conftest import ADMIN_SECRET, CLIENT_KEY
from tests.fakes import _native
from tests.fakes import openai_upstream as oa
from tests.integration._doors import KINDS, MODELS, Served

HI = [{"role": "user", "content": "hi"}]
RPM1_KEY = "rg-door-rpm-one-0000000000000000000000000000"
NARROW_KEY = "rg-door-narrow-000000000000000000000000000"
CAPPED_KEY = "rg-door-capped-000000000000000000000000000"


@pytest.fixture
def sdk() -> Iterator[Callable[..., anthropic.Anthropic]]:
    """Factory: `sdk(served, key=CLIENT_KEY, **options)` -> an SDK client of the gateway, closed
    after the test."""
    made: list[anthropic.Anthropic] = []

    def make(served: Served, key: str = CLIENT_KEY, **extra: Any) -> anthropic.Anthropic:
        made.append(
            anthropic.Anthropic(
                base_url=served.gw.base, api_key=key, max_retries=0, timeout=10, **extra
            )
        )
        return made[-1]

    yield make
    for client in made:
        client.close()


def script(served: Served, **fields: Any) -> None:
    """Every next answer of the fake, whatever its kind (the Reply fields both kinds have)."""
    reply = oa.Reply if isinstance(served.fake, oa.FakeOpenAI) else _native.Reply
    served.fake.default = reply(**fields)


def error_of(exc: anthropic.APIStatusError) -> dict[str, Any]:
    body = exc.body
    assert isinstance(body, dict) and body.get("type") == "error", body
    assert set(body["error"]) >= {"type", "message"}, body
    return body["error"]


# --- refusals by the gateway ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_refusals_come_in_anthropic_shape_as_the_sdk_classes(door_upstream, kind, sdk):
    served = door_upstream(
        kind,
        {
            "clients": [
                {"name": "main", "key": CLIENT_KEY},
                {"name": "rpm1", "key": RPM1_KEY, "rpm": 1},
                {"name": "narrow", "key": NARROW_KEY, "models": ["some-other-model"]},
            ]
        },
    )
    served.reply(text="fine")
    client = sdk(served)

    keyless = sdk(served, "unused", default_headers={"Authorization": anthropic.Omit()})
    with pytest.raises(anthropic.AuthenticationError) as no_key:
        keyless.messages.create(model=served.model, max_tokens=8, messages=HI)
    assert error_of(no_key.value)["type"] == "authentication_error"
    assert "authorization" not in no_key.value.request.headers
    with pytest.raises(anthropic.AuthenticationError) as wrong_key:
        sdk(served, key="rg-not-a-client-key-0000000000").messages.create(
            model=served.model, max_tokens=8, messages=HI
        )
    assert error_of(wrong_key.value)["type"] == "authentication_error"

    with pytest.raises(anthropic.NotFoundError) as unknown:
        client.messages.create(model="no-such-model-anywhere", max_tokens=8, messages=HI)
    assert error_of(unknown.value)["type"] == "not_found_error"

    for bad, field in (
        ({"model": served.model, "messages": HI}, "max_tokens"),
        ({"model": served.model, "max_tokens": 8, "messages": "hi"}, "messages"),
        ({"model": served.model, "max_tokens": True, "messages": HI}, "max_tokens"),
    ):
        with pytest.raises(anthropic.BadRequestError) as invalid:
            client.post("/v1/messages", cast_to=dict[str, Any], body=bad)
        error = error_of(invalid.value)
        assert error["type"] == "invalid_request_error" and field in error["message"], error

    with pytest.raises(anthropic.PermissionDeniedError) as denied:
        sdk(served, NARROW_KEY).messages.create(model=served.model, max_tokens=8, messages=HI)
    assert error_of(denied.value)["type"] == "permission_error"

    slow = sdk(served, RPM1_KEY)
    first = slow.messages.with_raw_response.create(model=served.model, max_tokens=8, messages=HI)
    assert first.parse().content[0].text == "fine"
    assert first.headers["x-ratelimit-limit-requests"] == "1"
    with pytest.raises(anthropic.RateLimitError) as limited:
        slow.messages.create(model=served.model, max_tokens=8, messages=HI)
    assert error_of(limited.value)["type"] == "rate_limit_error"
    headers = limited.value.response.headers
    assert 0 < int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-limit-requests"] == "1"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert "x-ratelimit-reset-requests" in headers

    # only the rpm client's first call went up (a body the translation refuses goes on to an
    # Anthropic upstream, which refuses it in turn: the 400s above)
    calls = served.fake.calls()
    if kind == "anthropic":
        calls = [c for c in calls if c.json.get("max_tokens") == 8 and c.json["messages"] == HI]
    assert len(calls) == 1


def test_a_body_invalid_in_anthropics_own_format_never_reaches_the_upstream(door_upstream, sdk):
    served = door_upstream("anthropic")
    client = sdk(served)
    for bad in (
        {"model": served.model, "messages": HI},
        {"model": served.model, "max_tokens": True, "messages": HI},
        {"model": served.model, "max_tokens": 0, "messages": HI},
        {"model": served.model, "max_tokens": 8, "messages": "hi"},
    ):
        with pytest.raises(anthropic.BadRequestError):
            client.post("/v1/messages", cast_to=dict[str, Any], body=bad)
    assert served.fake.calls() == []


@pytest.mark.parametrize("kind", KINDS)
def test_the_budget_reservation_reads_the_bodys_max_tokens(door_upstream, kind, sdk):
    served = door_upstream(
        kind,
        {
            "clients": [{"name": "capped", "key": CAPPED_KEY, "monthly_budget_usd": 0.01}],
            # $0.001 per output token, input free: max_tokens alone decides the reservation
            "pricing": {served_model(kind): {"input_per_mtok": 0, "output_per_mtok": 1000}},
        },
    )
    served.reply(text="cheap", usage=(3, 2))
    client = sdk(served, CAPPED_KEY)
    with pytest.raises(anthropic.RateLimitError) as refused:  # reserves $1 of a $0.01 budget
        client.messages.create(model=served.model, max_tokens=1000, messages=HI)
    assert error_of(refused.value)["type"] == "rate_limit_error"
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert "budget" in error_of(refused.value)["message"].lower()
    assert served.fake.calls() == []
    msg = client.messages.create(model=served.model, max_tokens=5, messages=HI)  # $0.005
    assert msg.content[0].text == "cheap"
    assert len(served.fake.calls()) == 1


def test_a_passed_through_body_reserves_by_its_own_max_tokens(door_upstream, sdk):
    """A body only Anthropic understands (a `document` block, which the translation refuses)
    still goes to an Anthropic target, and its reservation reads `max_tokens` all the same."""
    served = door_upstream(
        "anthropic",
        {
            "clients": [{"name": "capped", "key": CAPPED_KEY, "monthly_budget_usd": 0.01}],
            "pricing": {served_model("anthropic"): {"input_per_mtok": 0, "output_per_mtok": 1000}},
        },
    )
    served.reply(text="read it", usage=(3, 2))
    pdf = {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"}
    turn = [{"type": "document", "source": pdf}, {"type": "text", "text": "Summarise."}]
    messages = [{"role": "user", "content": turn}]
    client = sdk(served, CAPPED_KEY)
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(model=served.model, max_tokens=1000, messages=messages)
    assert served.fake.calls() == []
    msg = client.messages.create(model=served.model, max_tokens=5, messages=messages)
    assert msg.content[0].text == "read it"
    (up,) = served.fake.calls()
    assert up.json["messages"] == messages and up.json["max_tokens"] == 5


def served_model(kind: str) -> str:
    return f"{kind}/{MODELS[kind]}"


# --- upstream failures ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_an_upstream_that_keeps_failing_is_a_502_api_error(door_upstream, kind, sdk, caplog):
    caplog.set_level(logging.INFO)
    served = door_upstream(kind)
    script(served, status=500)
    client = sdk(served)
    with pytest.raises(anthropic.InternalServerError) as failed:
        client.messages.create(model=served.model, max_tokens=8, messages=HI)
    assert failed.value.status_code == 502
    assert error_of(failed.value)["type"] == "api_error"
    assert served.key not in str(failed.value.body)
    assert len(served.fake.calls()) == 2  # both attempts of the retry policy (FAST) were made
    with (  # nothing started: a plain 502
        pytest.raises(anthropic.APIStatusError) as streamed,
        client.messages.stream(model=served.model, max_tokens=8, messages=HI) as stream,
    ):
        stream.get_final_message()
    assert streamed.value.status_code == 502
    assert error_of(streamed.value)["type"] == "api_error"
    assert "relaygate" in caplog.text  # the failures were logged, without a key
    assert served.key not in caplog.text and CLIENT_KEY not in caplog.text


@pytest.mark.parametrize("kind", KINDS)
def test_a_failure_mid_stream_is_an_error_event_the_sdk_raises(door_upstream, kind, sdk):
    served = door_upstream(kind)
    # paced, so the failure comes after the first bytes went out (before them the gateway
    # would retry it as a failed attempt, SPEC §4)
    script(served, text="one two three four", inband_error_after=2, chunk_delay_s=0.03)
    texts: list[str] = []
    with (
        pytest.raises(anthropic.APIStatusError) as broken,
        sdk(served).messages.stream(model=served.model, max_tokens=32, messages=HI) as stream,
    ):
        texts.extend(stream.text_stream)
    assert "".join(texts) == "one two"  # what came before the failure reached the client
    assert broken.value.response.status_code == 200
    error = error_of(broken.value)
    assert error["type"] in ("api_error", "overloaded_error"), error


# --- the ledger and the answer headers -----------------------------------------------------------


def ledger_rows(served: Served, ids: set[str]) -> dict[str, dict[str, Any]]:
    """Every ledger row by id, once the rows `ids` are written (the admin read flushes the write
    buffer first; the poll is bounded)."""
    deadline = time.monotonic() + 3
    while True:
        flushed = httpx.get(
            served.gw.base + "/admin/failures", headers={"admin-secret": ADMIN_SECRET}, timeout=10
        )
        assert flushed.status_code == 200
        with sqlite3.connect(served.gw.db_path) as db:
            db.row_factory = sqlite3.Row
            rows = {r["id"]: dict(r) for r in db.execute("SELECT * FROM ledger")}
        if ids <= set(rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


@pytest.mark.parametrize("kind", KINDS)
def test_ledger_rows_and_answer_headers(door_upstream, kind, sdk):
    served = door_upstream(kind, {"admin_secret": ADMIN_SECRET})
    served.reply(text="Ledger me", usage=(11, 7))
    client = sdk(served)
    raw = client.messages.with_raw_response.create(model=served.model, max_tokens=16, messages=HI)
    msg = raw.parse()
    with client.messages.stream(model=served.model, max_tokens=16, messages=HI) as stream:
        streamed = stream.get_final_message()
        stream_headers = stream.response.headers
    assert (streamed.usage.input_tokens, streamed.usage.output_tokens) == (11, 7)

    key_id = f"{kind}:nokey" if kind == "ollama" else f"{kind}:{sha8(served.key)}"
    rows = ledger_rows(served, {raw.headers["x-request-id"], stream_headers["x-request-id"]})
    for headers, is_stream in ((raw.headers, 0), (stream_headers, 1)):
        rid = headers["x-request-id"]
        assert rid.startswith("req_") and headers["x-relaygate-provider"] == kind
        assert headers["x-relaygate-model"] == MODELS[kind]
        assert headers["x-relaygate-key-id"] == key_id
        assert headers["x-relaygate-attempts"] == "1"
        assert headers["x-relaygate-cache"] == "bypass"
        row = rows[rid]
        assert (row["route"], row["client_id"], row["status"]) == (
            "/v1/messages",
            static_id(CLIENT_KEY),
            200,
        )
        assert (row["provider"], row["model"], row["key_id"]) == (kind, MODELS[kind], key_id)
        assert (row["prompt_tokens"], row["completion_tokens"]) == (11, 7)
        assert row["stream"] == is_stream and row["error_code"] is None
    if kind != "anthropic":  # the door's ids derive from the request id (formats/base.py)
        assert msg.id == "msg_" + raw.headers["x-request-id"].removeprefix("req_")
    assert len(rows) == 2


def sha8(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:8]
