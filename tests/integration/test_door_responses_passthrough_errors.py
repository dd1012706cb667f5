"""The OpenAI Responses front door, part two (part one: test_door_responses.py): the same-format
passthrough (`openai-responses`: the openai kind with `responses_api: true`, whose POST /responses
gets the client's body but for the model), stateless refusals, OpenAI-shaped errors as the `openai`
SDK raises them, a failure after the stream started, and budgets reserved from
`max_output_tokens`, over every upstream kind (SPEC §6, §7a, §8)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import CLIENT_KEY
from tests.fakes import _native
from tests.fakes import openai_upstream as oa
from tests.integration._doors import FAST, KINDS, MODELS, WEATHER_CALL
from tests.integration.test_door_responses import (
    WEATHER_TOOL,
    check_headers,
    check_row,
    check_sequence,
    close_sdk_clients,  # noqa: F401 (autouse)
    codex_body,
    ledger_row,
    post_stream,
    sdk,
    sse,
)

SLOW_KEY = "rg-door-responses-slow-0123456789abcdefghijk"
NARROW_KEY = "rg-door-responses-narrow-0123456789abcdefghi"
PASSTHROUGH = "openai-responses"
ALL = (*KINDS, PASSTHROUGH)
HOSTED = {"tools": [{"type": "web_search"}], "tool_choice": {"type": "web_search"}}
# the pieces come apart, so the failure is not in the read that starts the stream (a failure
# there is retried: nothing was sent yet)
MID_STREAM = {"text": "one two three four five", "inband_error_after": 2, "chunk_delay_s": 0.05}


def serve(door_upstream: Any, kind: str, **config: Any) -> Any:
    if kind == PASSTHROUGH:
        return door_upstream("openai", config, responses_api=True)
    return door_upstream(kind, config)


def reply(served: Any, **fields: Any) -> None:
    """Script the next answers with the fake's own Reply (failures included)."""
    cls = oa.Reply if isinstance(served.fake, oa.FakeOpenAI) else _native.Reply
    served.fake.default = cls(**fields)


def error_of(exc: openai.APIStatusError) -> dict[str, Any]:
    """The error object of the answer, checked for OpenAI's shape."""
    body = exc.response.json()
    assert set(body) == {"error"}, body
    assert {"message", "type", "code", "param"} <= set(body["error"]), body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return dict(body["error"])


def refuse_previous_response(served: Any) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(served).responses.create(
            model=served.model, input="go on", previous_response_id="resp_1"
        )
    error = error_of(caught.value)
    assert error["code"] == "previous_response_not_found", error
    assert error["param"] == "previous_response_id" and error["type"] == "invalid_request_error"
    assert "whole conversation" in error["message"] and "'input'" in error["message"], error
    assert caught.value.code == "previous_response_not_found"
    assert served.fake.calls() == []


@pytest.mark.parametrize("kind", KINDS)
def test_stateless_refusals(door_upstream, kind):
    served = serve(door_upstream, kind)
    refuse_previous_response(served)
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(served).responses.create(
            model=served.model, input=[{"type": "item_reference", "id": "msg_1"}]
        )
    assert error_of(caught.value)["param"] == "input[0]"
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(served).responses.create(model=served.model, input="search the web", **HOSTED)
    error = error_of(caught.value)
    assert error["param"] == "tool_choice" and "'web_search'" in error["message"], error
    assert served.fake.calls() == []


def test_previous_response_id_is_refused_before_a_passthrough_too(door_upstream):
    refuse_previous_response(serve(door_upstream, PASSTHROUGH))


def test_a_forced_hosted_tool_passes_through_to_a_target_that_runs_it(door_upstream):
    served = serve(door_upstream, PASSTHROUGH)
    answer = sdk(served).responses.create(model=served.model, input="search the web", **HOSTED)
    assert answer.status == "completed"
    assert served.fake.calls()[0].json == {
        "model": MODELS["openai"],
        "input": "search the web",
        **HOSTED,
        "store": False,  # stateless: store is treated as false (SPEC §7a)
    }


@pytest.mark.parametrize("kind", ALL)
def test_errors_in_openai_shape(door_upstream, kind):
    clients = [
        {"name": "tests", "key": CLIENT_KEY},
        {"name": "slow", "key": SLOW_KEY, "rpm": 1},
        {"name": "narrow", "key": NARROW_KEY, "models": ["some/other-model"]},
    ]
    retries = {**FAST, "failure_threshold": 50}
    served = serve(door_upstream, kind, clients=clients, retries=retries)
    ask = {"model": served.model, "input": "hello"}

    with pytest.raises(openai.AuthenticationError) as caught:
        sdk(served, key="rg-not-a-client-key").responses.create(**ask)
    assert error_of(caught.value)["code"] == "invalid_api_key"
    assert "rg-not-a-client-key" not in caught.value.response.text

    with pytest.raises(openai.NotFoundError) as caught:
        sdk(served).responses.create(model="no-such-model-anywhere", input="hello")
    assert error_of(caught.value)["code"] == "model_not_found"

    with pytest.raises(openai.PermissionDeniedError) as caught:
        sdk(served, key=NARROW_KEY).responses.create(**ask)
    assert error_of(caught.value)["code"] == "model_not_allowed"

    slow = sdk(served, key=SLOW_KEY)
    assert slow.responses.create(**ask).status == "completed"
    with pytest.raises(openai.RateLimitError) as caught:
        slow.responses.create(**ask)
    error = error_of(caught.value)
    assert error["code"] == "rate_limit_exceeded", error
    headers = caught.value.response.headers
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-limit-requests"] == "1"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert len(served.fake.calls()) == 1  # no refusal reached the upstream

    # a failure after the stream started: never response.completed
    reply(served, **MID_STREAM)
    seen: list[str] = []
    with (
        pytest.raises((RuntimeError, openai.APIError)) as failed,
        sdk(served).responses.stream(**ask) as stream,
    ):
        for event in stream:
            seen.append(event.type)
        stream.get_final_response()
    assert "response.completed" not in seen, (seen, failed.value)
    assert seen[:2] == ["response.created", "response.in_progress"], (seen, failed.value)
    assert seen.count("response.output_text.delta") == 2, seen
    # translated, or the upstream's own event passed through: response.failed, then the end
    assert seen[-1] == "response.failed", (seen, failed.value)
    assert isinstance(failed.value, RuntimeError)  # get_final_response: no completed

    reply(served, status=500)
    with (
        pytest.raises(openai.InternalServerError) as caught,
        sdk(served).responses.stream(**ask) as stream,
    ):
        stream.get_final_response()
    assert caught.value.status_code == 502  # before the stream started: an HTTP error
    with pytest.raises(openai.InternalServerError) as caught:
        sdk(served).responses.create(**ask)
    assert caught.value.status_code == 502
    assert error_of(caught.value)["code"] == "upstream_error"
    rid = caught.value.response.headers["x-request-id"]
    row = ledger_row(served, rid)
    assert (row["route"], row["status"]) == ("/v1/responses", 502), row


@pytest.mark.parametrize("kind", KINDS)
def test_a_mid_stream_failure_is_response_failed_on_the_wire(door_upstream, kind):
    served = serve(door_upstream, kind)
    reply(served, **MID_STREAM)
    body = {"model": served.model, "input": "count", "stream": True}
    with httpx.stream(
        "POST", served.gw.v1 + "/responses", json=body, headers=served.gw.headers(), timeout=10
    ) as answer:
        assert answer.status_code == 200
        rid = answer.headers["x-request-id"]
        events = sse(answer.iter_lines())
    for n, (name, data) in enumerate(events):
        assert name == data["type"] and data["sequence_number"] == n, events
    name, data = events[-1]
    assert name == "response.failed", events
    failed = data["response"]
    assert failed["status"] == "failed" and failed["id"] == events[0][1]["response"]["id"]
    assert failed["error"]["code"] and failed["error"]["message"], failed
    assert [e for e, _ in events].count("response.output_text.delta") == 2
    row = ledger_row(served, rid)
    assert row["route"] == "/v1/responses" and row["error_code"], row


def test_a_passed_through_mid_stream_failure_stays_response_failed(door_upstream):
    served = serve(door_upstream, PASSTHROUGH)
    reply(served, **MID_STREAM)
    body = {"model": served.model, "input": "count", "stream": True}
    with httpx.stream(
        "POST", served.gw.v1 + "/responses", json=body, headers=served.gw.headers(), timeout=10
    ) as answer:
        events = sse(answer.iter_lines())
    assert events[-1][0] == "response.failed", events[-1]


@pytest.mark.parametrize("kind", ALL)
def test_max_output_tokens_drives_the_budget_reservation(door_upstream, kind):
    # $1 per 1k output tokens and a 5 cent budget: 1,000 output tokens cannot be reserved
    upstream = "openai" if kind == PASSTHROUGH else kind
    pricing = {f"{upstream}/{MODELS[upstream]}": {"input_per_mtok": 0, "output_per_mtok": 1000}}
    clients = [{"name": "capped", "key": CLIENT_KEY, "monthly_budget_usd": 0.05}]
    served = serve(door_upstream, kind, clients=clients, pricing=pricing)
    client = sdk(served)
    with pytest.raises(openai.RateLimitError) as caught:
        client.responses.create(model=served.model, input="write a book", max_output_tokens=1000)
    error = error_of(caught.value)
    assert (error["type"], error["code"]) == ("insufficient_quota", "budget_exceeded"), error
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert served.fake.calls() == []
    reply(served, text="Short.", usage=(4, 3))
    raw = client.responses.with_raw_response.create(
        model=served.model, input="a word", max_output_tokens=20
    )
    assert raw.parse().output_text == "Short."
    sent = served.fake.calls()[0].json
    if kind == PASSTHROUGH:
        assert sent["max_output_tokens"] == 20
    elif kind in ("openai", "groq"):
        assert sent["max_completion_tokens"] == 20
    row = ledger_row(served, raw.headers["x-request-id"])
    assert row["status"] == 200 and row["completion_tokens"] > 0, row
    assert row["cost_usd"] == pytest.approx(row["completion_tokens"] / 1000), row


def test_a_passed_through_body_the_translation_refuses_reserves_by_max_output_tokens(
    door_upstream,
):
    pricing = {f"openai/{MODELS['openai']}": {"input_per_mtok": 0, "output_per_mtok": 1000}}
    clients = [{"name": "capped", "key": CLIENT_KEY, "monthly_budget_usd": 0.05}]
    served = serve(door_upstream, PASSTHROUGH, clients=clients, pricing=pricing)
    client = sdk(served)
    with pytest.raises(openai.RateLimitError) as caught:
        client.responses.create(
            model=served.model, input="search", max_output_tokens=1000, **HOSTED
        )
    assert error_of(caught.value)["code"] == "budget_exceeded"
    answer = client.responses.create(
        model=served.model, input="search", max_output_tokens=20, **HOSTED
    )
    assert answer.status == "completed"
    assert served.fake.calls()[0].json["max_output_tokens"] == 20


def test_passthrough_to_an_upstream_that_serves_responses(door_upstream):
    served = door_upstream("openai", responses_api=True)
    client = sdk(served)
    served.reply(text="Passed through whole")
    raw = client.responses.with_raw_response.create(
        model=served.model, input="hello", tools=[{"type": "web_search"}], store=False
    )
    answer = raw.parse()
    assert answer.output_text == "Passed through whole" and answer.status == "completed"
    rid = check_headers(served, raw.headers)
    recorded = served.fake.calls()
    assert [r.path for r in recorded] == ["/v1/responses"]
    up = recorded[0]
    assert up.json == {
        "model": MODELS["openai"],
        "input": "hello",
        "tools": [{"type": "web_search"}],
        "store": False,
    }
    assert up.key == served.key and up.headers["Authorization"] == f"Bearer {served.key}"
    assert all(served.gw.key not in value for value in up.headers.values())
    check_row(served, rid, stream=False, usage=(11, 3))  # the fake's own usage

    served.reply(tool_calls=[WEATHER_CALL])
    with client.responses.stream(
        model=served.model, input="weather?", tools=[WEATHER_TOOL, {"type": "web_search"}]
    ) as stream:
        final = stream.get_final_response()
    assert [item.type for item in final.output] == ["function_call"]
    assert json.loads(final.output[0].arguments) == {"city": "Paris"}
    up = served.fake.calls()[-1]
    assert up.path == "/v1/responses" and up.json["stream"] is True
    assert up.json["tools"] == [WEATHER_TOOL, {"type": "web_search"}]


def test_a_codex_cli_turn_passes_through_whole(door_upstream):
    served = door_upstream("openai", responses_api=True)
    served.reply(tool_calls=[{"name": "shell", "arguments": '{"command":["ls"]}'}])
    sent = codex_body(served.model)
    headers, events = post_stream(served, sent)
    check_sequence(events)
    assert events[-1][0] == "response.completed"
    assert events[-1][1]["response"]["output"][0]["name"] == "shell"
    recorded = served.fake.calls()
    assert [r.path for r in recorded] == ["/v1/responses"]
    assert recorded[0].json == {**sent, "model": MODELS["openai"]}
    rid = check_headers(served, headers)
    check_row(served, rid, stream=True, usage=(11, 1))
