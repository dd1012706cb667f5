"""SPEC §4 end to end: every row of the key-state table, the 503 contract, the provider-wide
back-off and the distribution, through the real server and a fake upstream scripted per key."""

from __future__ import annotations

import time
from collections import Counter

import httpx
import openai
import pytest

from tests.conftest import ADMIN_SECRET, openai_provider
from tests.fakes.openai_upstream import Reply, errors

FAST = {"backoff_base_s": 0.01, "backoff_max_s": 0.05}
MSG = [{"role": "user", "content": "hello pool"}]


def start(live_gateway, fake, keys, *, strategy="round_robin", retries=None, **extra):
    provider = openai_provider(fake, keys, key_strategy=strategy, **extra)
    config = {
        "providers": {"up": provider},
        "retries": {**FAST, **(retries or {})},
        "admin_secret": ADMIN_SECRET,
    }
    return live_gateway(config)


def post(gw, **body):
    payload = {"model": "up/gpt-4o-mini", "messages": MSG, **body}
    return httpx.post(gw.v1 + "/chat/completions", json=payload, headers=gw.headers(), timeout=10)


def state(gw, kid_suffix_key):
    from relaygate.keys.pool import key_id

    kid = key_id("up", kid_suffix_key)
    return next(s for s in gw.gateway.key_states() if s["key_id"] == kid)


def test_round_robin_30_requests_over_3_keys_land_10_on_each(live_gateway, fake_openai):
    gw = start(live_gateway, fake_openai, ["sk-a", "sk-b", "sk-c"])
    client = openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0)
    seen = Counter()
    for _ in range(30):
        raw = client.chat.completions.with_raw_response.create(model="up/gpt-4o-mini", messages=MSG)
        seen[raw.headers["x-relaygate-key-id"]] += 1
        assert raw.headers["x-relaygate-attempts"] == "1"
    assert sorted(seen.values()) == [10, 10, 10]
    assert Counter(c.key for c in fake_openai.calls()) == {"sk-a": 10, "sk-b": 10, "sk-c": 10}


def test_least_used_is_the_default_and_balances(live_gateway, fake_openai):
    gw = live_gateway({"providers": {"up": openai_provider(fake_openai, ["sk-a", "sk-b"])}})
    for _ in range(6):
        assert post(gw).status_code == 200
    assert Counter(c.key for c in fake_openai.calls()) == {"sk-a": 3, "sk-b": 3}


def test_429_with_retry_after_cools_the_key_and_the_next_key_answers(live_gateway, fake_openai):
    fake_openai.script(
        "sk-a",
        Reply(status=429, error=errors.rate_limit_minute(), headers={"retry-after": "17"}),
        Reply(),
    )
    gw = start(live_gateway, fake_openai, ["sk-a", "sk-b"])
    resp = post(gw)
    assert resp.status_code == 200
    assert resp.headers["x-relaygate-attempts"] == "2"
    assert resp.headers["x-relaygate-key-id"] == state(gw, "sk-b")["key_id"]
    a = state(gw, "sk-a")
    assert a["state"] == "cooling" and 15 <= a["retry_in_s"] <= 17


@pytest.mark.parametrize(
    ("body", "headers", "expected"),
    [
        (errors.rate_limit_minute("26.604s"), {}, 26.6),  # "Please try again in 26.604s"
        (
            {
                "error": {
                    "message": "Too many requests",
                    "type": "requests",
                    "code": "rate_limit_exceeded",
                }
            },
            {"x-ratelimit-reset-requests": "6m0s"},
            360,
        ),
        (
            {
                "error": {
                    "message": "Too many requests",
                    "type": "requests",
                    "code": "rate_limit_exceeded",
                }
            },
            {},
            60,
        ),  # the default
    ],
)
def test_429_reset_read_from_message_headers_or_default(
    live_gateway, fake_openai, body, headers, expected
):
    fake_openai.script("sk-a", Reply(status=429, error=body, headers=headers), Reply())
    gw = start(live_gateway, fake_openai, ["sk-a", "sk-b"])
    assert post(gw).status_code == 200
    a = state(gw, "sk-a")
    assert a["state"] == "cooling"
    assert expected - 2 <= a["retry_in_s"] <= expected


@pytest.mark.parametrize(
    ("status", "body", "reset_in"),
    [
        (429, errors.insufficient_quota(), 3600),  # no reset coming: the configured default
        (429, errors.rate_limit_day("7m12s"), 432),  # OpenAI requests per day
        (429, errors.groq_tokens_per_day(), 578),  # Groq tokens per day, "9m38.016s"
        (402, errors.openrouter_credits(), 3600),
    ],
    ids=["openai-insufficient-quota", "openai-rpd", "groq-tpd", "openrouter-402"],
)
def test_quota_exhausted_parks_the_key_until_its_reset(
    live_gateway, fake_openai, status, body, reset_in
):
    fake_openai.script("sk-a", Reply(status=status, error=body))
    gw = start(live_gateway, fake_openai, ["sk-a", "sk-b"])
    assert post(gw).status_code == 200
    a = state(gw, "sk-a")
    assert a["state"] == "exhausted"
    assert reset_in - 3 <= a["retry_in_s"] <= reset_in
    for _ in range(4):  # parked: never tried again
        assert post(gw).status_code == 200
    assert len(fake_openai.calls("sk-a")) == 1


def test_openrouter_free_tier_daily_cap_uses_its_reset(live_gateway, fake_openai):
    reset_ms = int((time.time() + 5000) * 1000)
    fake_openai.script("sk-a", Reply(status=429, error=errors.openrouter_free_per_day(reset_ms)))
    provider = {
        "type": "openrouter",
        "base_url": fake_openai.base_url,
        "keys": ["sk-a", "sk-b"],
        "key_strategy": "round_robin",
        "models": ["gpt-4o-mini"],
    }
    gw = live_gateway({"providers": {"up": provider}, "retries": FAST})
    assert post(gw).status_code == 200
    a = state(gw, "sk-a")
    assert a["state"] == "exhausted" and 4990 <= a["retry_in_s"] <= 5000


def test_401_makes_the_key_invalid_and_the_next_key_answers(live_gateway, fake_openai):
    fake_openai.script("sk-a", Reply(status=401, error=errors.invalid_key()))
    gw = start(live_gateway, fake_openai, ["sk-a", "sk-b"])
    for _ in range(3):
        assert post(gw).status_code == 200
    assert state(gw, "sk-a")["state"] == "invalid"
    assert len(fake_openai.calls("sk-a")) == 1


def test_5xx_is_retried_with_backoff_on_another_key(live_gateway, fake_openai):
    fake_openai.script("sk-a", Reply(status=500), Reply())
    gw = start(live_gateway, fake_openai, ["sk-a", "sk-b"])
    resp = post(gw)
    assert resp.status_code == 200 and resp.headers["x-relaygate-attempts"] == "2"
    assert state(gw, "sk-a")["state"] == "ready"  # one failure is not three


def test_three_failures_in_a_row_cool_the_key_then_502(live_gateway, fake_openai):
    fake_openai.script("sk-a", Reply(status=503, error=errors.server_error()))
    gw = start(live_gateway, fake_openai, ["sk-a"], retries={"max_attempts": 3})
    resp = post(gw)
    assert resp.status_code == 502
    assert resp.json()["error"]["code"] == "upstream_error"
    assert len(fake_openai.calls("sk-a")) == 3
    a = state(gw, "sk-a")
    assert a["state"] == "cooling" and 28 <= a["retry_in_s"] <= 30
    again = post(gw)  # the only key is cooling now: 503 with its return time
    assert again.status_code == 503 and 28 <= int(again.headers["retry-after"]) <= 30


def test_a_hang_times_out_and_the_next_key_answers(live_gateway, fake_openai):
    fake_openai.script("sk-a", Reply(hang=True))
    gw = start(live_gateway, fake_openai, ["sk-a", "sk-b"], timeout_s=0.3)
    started = time.monotonic()
    resp = post(gw)
    assert resp.status_code == 200 and resp.headers["x-relaygate-attempts"] == "2"
    assert time.monotonic() - started < 3


def test_every_key_hanging_ends_in_504(live_gateway, fake_openai):
    fake_openai.default = Reply(hang=True)
    gw = start(
        live_gateway, fake_openai, ["sk-a", "sk-b"], timeout_s=0.2, retries={"max_attempts": 2}
    )
    resp = post(gw)
    assert resp.status_code == 504
    assert resp.json()["error"]["code"] == "upstream_timeout"


def test_the_requests_own_4xx_is_returned_not_retried(live_gateway, fake_openai):
    fake_openai.script("sk-a", Reply(status=400, error=errors.context_length()))
    fake_openai.script("sk-b", Reply(status=400, error=errors.context_length()))
    gw = start(live_gateway, fake_openai, ["sk-a", "sk-b"])
    resp = post(gw)
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["code"] == "context_length_exceeded" and err["param"] == "messages"
    assert len(fake_openai.calls()) == 1
    assert all(s["state"] == "ready" for s in gw.gateway.key_states())


def test_no_usable_key_is_503_with_retry_after_of_the_earliest_return(live_gateway, fake_openai):
    fake_openai.script("sk-a", Reply(status=429, error=errors.insufficient_quota()))
    fake_openai.script(
        "sk-b", Reply(status=429, error=errors.rate_limit_minute(), headers={"retry-after": "30"})
    )
    gw = start(live_gateway, fake_openai, ["sk-a", "sk-b"])
    first = post(gw)
    assert first.status_code == 503
    body = first.json()["error"]
    assert body["code"] == "no_available_keys" and body["type"] == "service_unavailable"
    assert 29 <= int(first.headers["retry-after"]) <= 30
    calls = len(fake_openai.calls())
    second = post(gw)  # nothing is sent upstream while every key rests
    assert second.status_code == 503 and 28 <= int(second.headers["retry-after"]) <= 30
    assert len(fake_openai.calls()) == calls


def test_every_key_429_backs_off_the_provider_and_marks_no_key(live_gateway, fake_openai):
    fake_openai.default = Reply(
        status=429, error=errors.rate_limit_minute(), headers={"retry-after": "9"}
    )
    gw = start(live_gateway, fake_openai, ["sk-a", "sk-b", "sk-c"])
    resp = post(gw)
    assert resp.status_code == 503 and 8 <= int(resp.headers["retry-after"]) <= 9
    states = gw.gateway.key_states()
    assert [s["state"] for s in states] == ["ready", "ready", "ready"]
    assert all(8 <= s["pool_paused_for_s"] <= 9 for s in states)
    listed = httpx.get(gw.base + "/keys/status", headers=gw.headers()).json()["keys"]
    assert all(k["state"] == "ready" for k in listed)


def test_stream_error_before_the_first_byte_is_retried(live_gateway, fake_openai):
    fake_openai.script("sk-a", Reply(status=500), Reply())
    gw = start(live_gateway, fake_openai, ["sk-a", "sk-b"])
    client = openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="up/gpt-4o-mini", messages=MSG, stream=True
    )
    assert raw.headers["x-relaygate-attempts"] == "2"
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text == "Echo: hello pool"


def test_nothing_is_retried_once_a_byte_reached_the_client(live_gateway, fake_openai):
    fake_openai.script("sk-a", Reply(chunks=5, inband_error_after=2, chunk_delay_s=0.05))
    gw = start(live_gateway, fake_openai, ["sk-a", "sk-b"])
    with httpx.stream(
        "POST",
        gw.v1 + "/chat/completions",
        headers=gw.headers(),
        timeout=10,
        json={"model": "up/gpt-4o-mini", "messages": MSG, "stream": True},
    ) as resp:
        body = resp.read()
    assert b'"error"' in body and b"[DONE]" not in body
    assert len(fake_openai.calls()) == 1


def test_key_headers_and_states_never_show_keys(live_gateway, fake_openai):
    gw = start(live_gateway, fake_openai, ["sk-secret-aaaa", "sk-secret-bbbb"])
    resp = post(gw)
    assert resp.headers["x-relaygate-key-id"].startswith("up:")
    for url, headers in (
        (gw.base + "/keys/status", gw.headers()),
        (gw.base + "/admin/keys", {"admin-secret": ADMIN_SECRET}),
    ):
        text = httpx.get(url, headers=headers).text
        assert "sk-secret" not in text and "up:" in text


def test_admin_disable_and_enable_a_key(live_gateway, fake_openai):
    gw = start(live_gateway, fake_openai, ["sk-a", "sk-b"])
    kid = state(gw, "sk-a")["key_id"]
    url = f"{gw.base}/admin/keys/{kid}/disable"
    assert httpx.post(url, headers={"admin-secret": "wrong"}).status_code == 403
    assert httpx.post(url).status_code == 403
    done = httpx.post(url, headers={"Authorization": f"Bearer {ADMIN_SECRET}"})
    assert done.status_code == 200 and done.json()["key"]["state"] == "invalid"
    for _ in range(4):
        assert post(gw).status_code == 200
    assert fake_openai.calls("sk-a") == []
    enabled = httpx.post(
        f"{gw.base}/admin/keys/{kid}/enable", headers={"admin-secret": ADMIN_SECRET}
    )
    assert enabled.json()["key"]["state"] == "ready"
    missing = httpx.post(
        f"{gw.base}/admin/keys/up:00000000/enable", headers={"admin-secret": ADMIN_SECRET}
    )
    assert missing.status_code == 404


def test_admin_routes_do_not_exist_without_an_admin_secret(live_gateway, fake_openai):
    gw = live_gateway({"providers": {"up": openai_provider(fake_openai, ["sk-a"])}})
    assert httpx.get(gw.base + "/admin/keys", headers={"admin-secret": "x"}).status_code == 404


def test_a_stream_that_goes_silent_ends_with_a_timeout_event(live_gateway, fake_openai):
    fake_openai.script("sk-a", Reply(chunks=4, chunk_delay_s=0.05), Reply(chunks=4))
    gw = start(live_gateway, fake_openai, ["sk-a"], stream_idle_timeout_s=0.3)
    fake_openai.script("sk-a", Reply(chunks=6, chunk_delay_s=0.0, first_chunk_delay_s=0.0))
    ok = httpx.post(
        gw.v1 + "/chat/completions",
        headers=gw.headers(),
        timeout=10,
        json={"model": "up/gpt-4o-mini", "messages": MSG, "stream": True},
    )
    assert ok.text.rstrip().endswith("data: [DONE]")
    fake_openai.script("sk-a", Reply(chunks=6, chunk_delay_s=1.0))
    started = time.monotonic()
    with httpx.stream(
        "POST",
        gw.v1 + "/chat/completions",
        headers=gw.headers(),
        timeout=10,
        json={"model": "up/gpt-4o-mini", "messages": MSG, "stream": True},
    ) as resp:
        body = resp.read()
    assert time.monotonic() - started < 3
    assert b'"upstream_timeout"' in body and b"[DONE]" not in body
