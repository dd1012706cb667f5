"""The response cache's rules (SPEC §7b) through the real server: per-client isolation and the
shared mode, allowed models on hits, ledger rows (cache = hit, cost 0), budgets untouched by hits
while rpm counts them, ttl and the LRU bound, coalescing on and off, /metrics and the dashboard's
figures."""

from __future__ import annotations

import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ADMIN_SECRET
from tests.fakes import openai_upstream as oa
from tests.integration._doors import Served

ADMIN = {"admin-secret": ADMIN_SECRET}
KEY_A, KEY_B = "rg-cache-client-a-000000001", "rg-cache-client-b-000000002"
PRICING = {"openai/gpt-4o-mini": {"input_per_mtok": 100, "output_per_mtok": 2000}}
COST = (12 * 100 + 7 * 2000) / 1e6  # usage (12, 7)


def serve(door_upstream: Any, clients: list[dict[str, Any]] | None = None, **cache: Any) -> Served:
    config = {
        "cache": {"enabled": True, **cache},
        "admin_secret": ADMIN_SECRET,
        "pricing": PRICING,
        "clients": clients or [{"name": "a", "key": KEY_A}, {"name": "b", "key": KEY_B}],
    }
    served = door_upstream("openai", config)
    served.reply(text="Cached words.", usage=(12, 7))
    return served


def post(served: Served, key: str = KEY_A, text: str = "hello", **extra: Any) -> httpx.Response:
    body = {"model": served.model, "messages": [{"role": "user", "content": text}], **extra}
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(served.gw.v1 + "/chat/completions", json=body, headers=headers, timeout=10)


def word(answer: httpx.Response) -> str:
    assert answer.status_code == 200, answer.text
    return answer.headers["x-relaygate-cache"]


def calls(served: Served) -> int:
    return len(served.fake.calls())


def ledger(served: Served) -> list[dict[str, Any]]:
    assert httpx.get(served.gw.base + "/admin/failures", headers=ADMIN, timeout=10).is_success
    with sqlite3.connect(served.gw.db_path) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM ledger ORDER BY ts")]


def metrics(served: Served) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = httpx.get(served.gw.base + "/metrics", headers=ADMIN, timeout=10)
    assert answer.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }


# --- isolation ---------------------------------------------------------------------------------
def test_one_client_is_never_served_anothers_answer(door_upstream):
    served = serve(door_upstream)
    assert word(post(served, KEY_A)) == "miss"
    assert word(post(served, KEY_B)) == "miss"
    assert word(post(served, KEY_A)) == "hit"
    assert word(post(served, KEY_B)) == "hit"
    assert calls(served) == 2


def test_shared_cache_serves_every_client_but_checks_allowed_models(door_upstream):
    clients = [
        {"name": "a", "key": KEY_A},
        {"name": "b", "key": KEY_B},
        {"name": "narrow", "key": "rg-cache-narrow-0000000003", "models": ["fast"]},
    ]
    served = serve(door_upstream, clients, shared=True)
    assert word(post(served, KEY_A)) == "miss"
    assert word(post(served, KEY_B)) == "hit"
    refused = post(served, "rg-cache-narrow-0000000003")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "model_not_allowed"
    assert post(served, "rg-cache-wrong-key-00000000").status_code == 401
    assert calls(served) == 1


# --- ledger, budget, rate limits ---------------------------------------------------------------
def test_hits_are_ledger_rows_at_cost_zero_and_spend_no_budget(door_upstream):
    # the first request's worst case fits the budget; after its real cost, another miss's
    # worst case does not, but hits reserve nothing and are served
    clients = [{"name": "capped", "key": KEY_A, "monthly_budget_usd": 0.02, "rpm": 100}]
    served = serve(door_upstream, clients)
    first = post(served, max_tokens=5)
    assert word(first) == "miss"
    hits = [post(served, max_tokens=5) for _ in range(3)]
    assert [word(h) for h in hits] == ["hit"] * 3
    refused = post(served, text="something new", max_tokens=5)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
    rows = {r["id"]: r for r in ledger(served)}
    miss_row = rows[first.headers["x-request-id"]]
    assert miss_row["cache"] == "miss" and miss_row["cost_usd"] == pytest.approx(COST)
    for hit in hits:
        row = rows[hit.headers["x-request-id"]]
        assert row["cache"] == "hit" and row["cost_usd"] == 0
        assert (row["prompt_tokens"], row["completion_tokens"]) == (12, 7)
        assert row["route"] == "/v1/chat/completions" and row["status"] == 200
        assert row["provider"] == "openai" and row["model"] == "gpt-4o-mini"
        assert row["attempts"] == 0
    assert sum(r["cost_usd"] for r in rows.values()) == pytest.approx(COST)
    assert calls(served) == 1


def test_hits_count_against_rpm(door_upstream):
    served = serve(door_upstream, [{"name": "slow", "key": KEY_A, "rpm": 3}])
    answers = [post(served) for _ in range(3)]
    assert [word(a) for a in answers] == ["miss", "hit", "hit"]
    assert answers[2].headers["x-ratelimit-remaining-requests"] == "0"
    refused = post(served)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert calls(served) == 1


# --- ttl and bounds ----------------------------------------------------------------------------
def test_entries_expire_after_their_ttl(door_upstream):
    served = serve(door_upstream, ttl_s=0.4)
    assert word(post(served)) == "miss"
    assert word(post(served)) == "hit"
    time.sleep(0.6)
    assert word(post(served)) == "miss"
    assert calls(served) == 2


def test_the_lru_keeps_at_most_max_entries(door_upstream):
    served = serve(door_upstream, max_entries=2)
    for text in ("one", "two"):
        assert word(post(served, text=text)) == "miss"
    assert word(post(served, text="one")) == "hit"  # "one" is now the most recent
    assert word(post(served, text="three")) == "miss"  # "two" goes out
    assert word(post(served, text="one")) == "hit"
    assert word(post(served, text="two")) == "miss"
    assert calls(served) == 4


def test_an_unfinished_stream_is_not_stored(door_upstream):
    served = serve(door_upstream)
    served.fake.default = oa.Reply(text="cut short here", cut_after=1)
    with httpx.stream(
        "POST",
        served.gw.v1 + "/chat/completions",
        json={
            "model": served.model,
            "messages": [{"role": "user", "content": "x"}],
            "stream": True,
        },
        headers={"Authorization": f"Bearer {KEY_A}"},
        timeout=10,
    ) as answer:
        assert "[DONE]" not in answer.read().decode()
    served.reply(text="Whole.", usage=(1, 1))
    assert word(post(served, text="x")) == "miss"
    assert calls(served) == 2


# --- coalescing --------------------------------------------------------------------------------
@pytest.mark.parametrize(("coalesce", "upstream_calls"), [(True, 1), (False, 5)])
def test_concurrent_identical_misses(door_upstream, coalesce, upstream_calls):
    served = serve(door_upstream, coalesce=coalesce)
    served.fake.default = oa.Reply(text="Slow words.", usage=(12, 7), delay_s=0.5)
    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda _: post(served, text="same"), range(5)))
    assert all(a.status_code == 200 for a in answers)
    assert {a.json()["choices"][0]["message"]["content"] for a in answers} == {"Slow words."}
    assert calls(served) == upstream_calls
    words = sorted(word(a) for a in answers)
    assert words == (["hit"] * 4 + ["miss"] if coalesce else ["miss"] * 5)


def test_coalesced_waiters_run_their_own_call_when_the_leader_fails(door_upstream):
    served = serve(door_upstream, coalesce=True)
    failing = oa.Reply(
        status=400, error={"error": {"message": "bad", "type": "invalid_request_error"}}
    )
    served.fake.default = failing
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: post(served, text="fails"), range(3)))
    assert [a.status_code for a in answers] == [400] * 3


# --- metrics and the dashboard -----------------------------------------------------------------
def test_metrics_and_dashboard_show_hits_and_money_saved(door_upstream):
    served = serve(door_upstream)
    assert word(post(served)) == "miss"
    assert word(post(served)) == "hit"
    assert word(post(served)) == "hit"
    bypass = httpx.post(
        served.gw.v1 + "/chat/completions",
        json={"model": served.model, "messages": [{"role": "user", "content": "hello"}]},
        headers={"Authorization": f"Bearer {KEY_A}", "Cache-Control": "no-store"},
        timeout=10,
    )
    assert word(bypass) == "bypass"
    samples = metrics(served)
    route = "/v1/chat/completions"
    for result, n in (("hit", 2), ("miss", 1), ("bypass", 1)):
        labels = (("result", result), ("route", route))
        assert samples[("relaygate_cache_requests_total", labels)] == n
    assert samples[("relaygate_cache_saved_usd_total", ())] == pytest.approx(2 * COST)
    status = httpx.get(served.gw.base + "/status.json", timeout=10).json()
    figures = status["since_start"]["cache"]
    assert figures["hits"] == 2 and figures["misses"] == 1 and figures["bypass"] == 1
    assert figures["hit_ratio"] == pytest.approx(2 / 3, abs=1e-3)
    assert figures["saved_usd"] == pytest.approx(2 * COST)
    page = httpx.get(served.gw.base + "/static/dashboard.js", timeout=10)
    assert page.status_code == 200 and "cache hit ratio" in page.text
