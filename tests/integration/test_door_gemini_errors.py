"""The Gemini native front door end to end, continued (SPEC §5-§8, protocols.md §13.1, §13.3):
the client key in every place the door accepts it, errors in Google's shape as the google-genai
SDK raises them (unknown model, bad body, rpm, model not allowed, upstream failures before and
during a stream), budgets reserved from `generationConfig.maxOutputTokens`, and the passthrough
to a Gemini upstream (the body untouched, the pool's key, usage in the ledger)."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest
from google.genai import errors, types

from tests.conftest import CLIENT_KEY
from tests.fakes import _native
from tests.fakes import openai_upstream as oa
from tests.integration._doors import KINDS, MODELS
from tests.integration.test_door_gemini import ledger_row, sdk

HI = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


def url(served: Any, method: str = "generateContent", version: str = "v1beta") -> str:
    return f"{served.gw.base}/{version}/models/{served.model}:{method}"


def post(target: str, body: Any, **headers: str) -> httpx.Response:
    return httpx.post(target, json=body, headers=headers, timeout=10)


def google_error(answer: httpx.Response, code: int, status: str) -> dict[str, Any]:
    """The google.rpc.Status body of an error answer."""
    assert answer.status_code == code, answer.text
    error = answer.json()["error"]
    assert error["code"] == code and error["status"] == status, error
    assert isinstance(error["message"], str) and error["message"]
    return error


def reason(error: dict[str, Any]) -> str | None:
    info = [d for d in error.get("details", []) if d["@type"].endswith("google.rpc.ErrorInfo")]
    return info[0]["reason"] if info else None


def fail_with(served: Any, **script: Any) -> None:
    """Script the upstream's next answers in its own fake's Reply."""
    is_openai = isinstance(served.fake, oa.FakeOpenAI)
    served.fake.default = (oa.Reply if is_openai else _native.Reply)(**script)


def test_client_key_in_every_place_and_the_401(door_upstream):
    served = door_upstream("openai")
    served.reply(text="ok")
    key = served.gw.key
    assert post(url(served) + f"?key={key}", HI).json()["candidates"][0]["content"]["parts"] == [
        {"text": "ok"}
    ]
    for headers in ({"Authorization": f"Bearer {key}"}, {"x-api-key": key}):
        assert post(url(served), HI, **headers).status_code == 200
    assert post(url(served, version="v1"), HI, **{"x-goog-api-key": key}).status_code == 200
    assert post(url(served, "countTokens") + f"?key={key}", HI).json()["totalTokens"] > 0
    assert len(served.fake.calls()) == 4

    for headers in ({}, {"x-goog-api-key": "rg-wrong"}, {"Authorization": "Bearer rg-wrong"}):
        error = google_error(post(url(served), HI, **headers), 401, "UNAUTHENTICATED")
        assert key not in error["message"]
    google_error(post(url(served) + "?key=rg-wrong", HI), 401, "UNAUTHENTICATED")
    google_error(post(url(served, "streamGenerateContent"), HI), 401, "UNAUTHENTICATED")
    google_error(post(url(served, "countTokens"), HI), 401, "UNAUTHENTICATED")
    google_error(httpx.get(served.gw.base + "/v1beta/models"), 401, "UNAUTHENTICATED")
    assert len(served.fake.calls()) == 4

    wrong = sdk(served, key="rg-not-a-client-key-000000000000000000000")
    with pytest.raises(errors.ClientError) as caught:
        wrong.models.generate_content(model=served.model, contents="hi")
    assert caught.value.code == 401 and caught.value.status == "UNAUTHENTICATED"


def test_models_list_shape_follows_the_callers_key_header(door_upstream):
    served = door_upstream("openai")
    key, want = served.gw.key, f"models/{served.model}"
    for target, headers in (
        ("/v1/models", {"x-goog-api-key": key}),
        (f"/v1/models?key={key}", {}),
        ("/v1beta/models", {"x-goog-api-key": key}),
        ("/v1beta/models", {"Authorization": f"Bearer {key}"}),
    ):
        listed = httpx.get(served.gw.base + target, headers=headers, timeout=10).json()
        assert want in [m["name"] for m in listed["models"]], (target, listed)
        assert "generateContent" in listed["models"][0]["supportedGenerationMethods"]
    openai = httpx.get(served.gw.v1 + "/models", headers=served.gw.headers(), timeout=10).json()
    assert openai["object"] == "list" and "models" not in openai
    assert served.model in [m["id"] for m in openai["data"]]


def test_unknown_model_and_bad_bodies(door_upstream):
    served = door_upstream("openai")
    client = sdk(served, "v1beta")
    for model in ("nowhere/gpt-4o-mini", "no-such-model", "models/no-such-model"):
        with pytest.raises(errors.ClientError) as caught:
            client.models.generate_content(model=model, contents="hi")
        assert (caught.value.code, caught.value.status) == (404, "NOT_FOUND"), caught.value

    key = {"x-goog-api-key": served.gw.key}
    error = google_error(post(url(served), {"contents": "hi"}, **key), 400, "INVALID_ARGUMENT")
    assert "contents" in error["message"]
    bad = {**HI, "generationConfig": {"maxOutputTokens": "many"}}
    error = google_error(post(url(served), bad, **key), 400, "INVALID_ARGUMENT")
    assert "maxOutputTokens" in error["message"]
    answer = httpx.post(url(served), content=b"{not json", headers=key, timeout=10)
    google_error(answer, 400, "INVALID_ARGUMENT")
    assert served.fake.calls() == []


def test_model_not_allowed_is_permission_denied(door_upstream):
    allowed = {"name": "tests", "key": CLIENT_KEY, "models": ["openai/gpt-4o"]}
    served = door_upstream("openai", {"clients": [allowed]})
    client = sdk(served, "v1beta")
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model=served.model, contents="hi")
    assert (caught.value.code, caught.value.status) == (403, "PERMISSION_DENIED")
    assert reason(caught.value.details["error"]) == "MODEL_NOT_ALLOWED"
    with pytest.raises(errors.ClientError) as caught:
        list(client.models.generate_content_stream(model=served.model, contents="hi"))
    assert caught.value.code == 403
    assert served.fake.calls() == []


@pytest.mark.parametrize("kind", ["openai", "gemini"])
def test_rpm_limit_is_resource_exhausted_with_retry_after(door_upstream, kind):
    served = door_upstream(kind, {"clients": [{"name": "slow", "key": CLIENT_KEY, "rpm": 1}]})
    client = sdk(served)
    served.reply(text="first")
    assert client.models.generate_content(model=served.model, contents="hi").text == "first"
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model=served.model, contents="hi")
    refused = caught.value
    assert (refused.code, refused.status) == (429, "RESOURCE_EXHAUSTED")
    assert reason(refused.details["error"]) == "RATE_LIMIT_EXCEEDED"
    retry = [d for d in refused.details["error"]["details"] if "retryDelay" in d]
    assert retry and retry[0]["retryDelay"].endswith("s")
    assert 1 <= int(refused.response.headers["retry-after"]) <= 60
    assert refused.response.headers["x-ratelimit-limit-requests"] == "1"
    assert len(served.fake.calls()) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_upstream_failures_before_and_during_the_stream(door_upstream, kind):
    served = door_upstream(kind)
    client = sdk(served, "v1beta")
    fail_with(served, status=500)
    with pytest.raises(errors.ServerError) as caught:
        client.models.generate_content(model=served.model, contents="hi")
    assert caught.value.code == 502 and caught.value.status == "UNAVAILABLE", caught.value
    assert len(served.fake.calls()) == 2  # retried once (FAST: max_attempts 2)

    # (paced: a failure in the stream's first read is retried before anything is sent)
    fail_with(served, text="one two three four", inband_error_after=2, chunk_delay_s=0.05)
    got: list[str] = []
    with pytest.raises(errors.APIError) as caught:
        for chunk in client.models.generate_content_stream(model=served.model, contents="hi"):
            got.append(chunk.text or "")
    assert "".join(got).startswith("one two"), got  # it broke after the stream began
    assert isinstance(caught.value.code, int) and caught.value.code >= 500, caught.value
    assert caught.value.status in ("UNAVAILABLE", "INTERNAL"), caught.value


@pytest.mark.parametrize("kind", KINDS)
def test_budget_reserved_from_max_output_tokens(door_upstream, kind):
    client_entry = {"name": "capped", "key": CLIENT_KEY, "monthly_budget_usd": 0.05}
    pricing = {f"{kind}/{MODELS[kind]}": {"input_per_mtok": 0, "output_per_mtok": 1000}}
    served = door_upstream(kind, {"clients": [client_entry], "pricing": pricing})
    served.reply(text="cheap", usage=(5, 2))
    client = sdk(served, "v1beta")
    big = types.GenerateContentConfig(max_output_tokens=1000)  # $1.00 reserved: over $0.05
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model=served.model, contents="hi", config=big)
    assert (caught.value.code, caught.value.status) == (429, "RESOURCE_EXHAUSTED")
    assert reason(caught.value.details["error"]) == "BUDGET_EXCEEDED"
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert served.fake.calls() == []
    small = types.GenerateContentConfig(max_output_tokens=10)  # $0.01
    answer = client.models.generate_content(model=served.model, contents="hi", config=small)
    assert answer.text == "cheap"
    row = ledger_row(served.gw.db_path, answer.sdk_http_response.headers["x-request-id"])
    assert row["cost_usd"] == pytest.approx(0.002)


PASSTHROUGH = {
    "contents": [{"role": "user", "parts": [{"text": "hi there"}]}],
    "systemInstruction": {"role": "user", "parts": [{"text": "be brief"}]},
    "safetySettings": [
        {"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"},
    ],
    "generationConfig": {
        "temperature": 0.5,
        "maxOutputTokens": 64,
        "topK": 7,
        "thinkingConfig": {"thinkingBudget": 128, "includeThoughts": False},
    },
    "cachedContent": "cachedContents/abc123",
}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_passthrough_to_gemini_keeps_the_body_and_uses_the_pool_key(door_upstream, stream):
    served = door_upstream("gemini")
    served.reply(text="passed through", usage=(21, 4))
    method = "streamGenerateContent" if stream else "generateContent"
    target = url(served, method) + ("?alt=sse" if stream else "")
    answer = post(target, PASSTHROUGH, **{"x-goog-api-key": served.gw.key})
    assert answer.status_code == 200, answer.text
    (call,) = served.fake.calls()
    assert call.path == f"/v1beta/models/{MODELS['gemini']}:{method}"
    assert call.query == ({"alt": "sse"} if stream else {})
    assert call.json == PASSTHROUGH  # nothing the translation would drop is lost
    assert call.key == served.key and call.headers["x-goog-api-key"] == served.key
    assert served.gw.key not in repr((call.headers, call.query, call.json))
    if stream:
        assert answer.headers["content-type"].startswith("text/event-stream")
        assert answer.text.count("data: ") >= 2 and '"finishReason": "STOP"' in answer.text
    else:  # the upstream's answer as it came (its responseId, not one the door invents)
        assert answer.json()["candidates"][0]["content"]["parts"] == [{"text": "passed through"}]
        assert not answer.json()["responseId"].startswith("resp_")
    row = ledger_row(served.gw.db_path, answer.headers["x-request-id"])
    assert (row["provider"], row["model"], row["status"]) == ("gemini", MODELS["gemini"], 200)
    assert (row["prompt_tokens"], row["completion_tokens"], row["estimated"]) == (21, 4, 0)
    assert row["route"] == "/v1beta/models:generateContent"


def test_passthrough_from_the_sdk_with_thinking_and_safety(door_upstream):
    served = door_upstream("gemini")
    served.reply(text="ok")
    config = types.GenerateContentConfig(
        thinking_config=types.ThinkingConfig(thinking_budget=256),
        safety_settings=[
            types.SafetySetting(
                category=types.HarmCategory.HARM_CATEGORY_HATE_SPEECH,
                threshold=types.HarmBlockThreshold.BLOCK_NONE,
            )
        ],
    )
    client = sdk(served)
    answer = client.models.generate_content(model=served.model, contents="hi", config=config)
    assert answer.text == "ok"
    body = served.fake.calls()[-1].json
    thinking = body["generationConfig"]["thinkingConfig"]  # the SDK writes it in snake case
    assert thinking in ({"thinkingBudget": 256}, {"thinking_budget": 256}), body
    assert body["safetySettings"][0]["threshold"] == "BLOCK_NONE"


@pytest.mark.parametrize(
    "part",
    [
        {
            "inlineData": {
                "mimeType": "application/pdf",
                "data": base64.b64encode(b"%PDF-1.4").decode(),
            }
        },
        {"executableCode": {"language": "PYTHON", "code": "print(1)"}},
    ],
    ids=["pdf", "executable-code"],
)
def test_passthrough_of_parts_only_gemini_understands(door_upstream, part):
    """The translation refuses these parts, but a Gemini target takes the body as it came."""
    served = door_upstream("gemini")
    served.reply(text="read it")
    role = "model" if "executableCode" in part else "user"
    body = {
        "contents": [
            {"role": "user", "parts": [{"text": "look"}]},
            {"role": role, "parts": [part]},
            {"role": "user", "parts": [{"text": "what does it say?"}]},
        ]
    }
    answer = post(url(served), body, **{"x-goog-api-key": served.gw.key})
    assert answer.status_code == 200, answer.text
    assert served.fake.calls()[-1].json == body


@pytest.mark.parametrize("kind", ["openai", "ollama"])
def test_parts_only_gemini_understands_are_refused_for_other_targets(door_upstream, kind):
    served = door_upstream(kind)
    pdf = {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0xLjQ="}}
    body = {"contents": [{"role": "user", "parts": [{"text": "read"}, pdf]}]}
    answer = post(url(served), body, **{"x-goog-api-key": served.gw.key})
    error = google_error(answer, 400, "INVALID_ARGUMENT")
    assert "contents[0].parts[1]" in error["message"] and "application/pdf" in error["message"]
    assert served.fake.calls() == []


def test_untranslatable_passthrough_reserves_by_its_max_output_tokens(door_upstream):
    capped = {"name": "capped", "key": CLIENT_KEY, "monthly_budget_usd": 0.05}
    pricing = {"gemini/gemini-2.5-flash": {"input_per_mtok": 0, "output_per_mtok": 1000}}
    served = door_upstream("gemini", {"clients": [capped], "pricing": pricing})
    served.reply(text="a pdf", usage=(30, 2))
    pdf = {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0xLjQ="}}
    contents = [{"role": "user", "parts": [pdf, {"text": "summarize"}]}]
    key = {"x-goog-api-key": served.gw.key}
    for config in ({"maxOutputTokens": 1000}, {"max_output_tokens": 1000}):
        for name in ("generationConfig", "generation_config"):
            body = {"contents": contents, name: config}
            error = google_error(post(url(served), body, **key), 429, "RESOURCE_EXHAUSTED")
            assert reason(error) == "BUDGET_EXCEEDED"
    assert served.fake.calls() == []
    body = {"contents": contents, "generationConfig": {"maxOutputTokens": 10}}  # $0.01
    answer = post(url(served), body, **key)
    assert answer.status_code == 200, answer.text
    assert served.fake.calls()[-1].json == body
    row = ledger_row(served.gw.db_path, answer.headers["x-request-id"])
    assert (row["prompt_tokens"], row["completion_tokens"]) == (30, 2)
    assert row["cost_usd"] == pytest.approx(0.002)
