"""SPEC §5-§7 end to end: issued keys, revocation, allowed models, rate limits, budgets that hold
under concurrency, the weekly key, and the access level of every route."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.conftest import ADMIN_SECRET, CLIENT_KEY, openai_provider
from tests.fakes.openai_upstream import Reply
from tests.integration._proc import clean_env

MSG = [{"role": "user", "content": "limits"}]
ADMIN = {"admin-secret": ADMIN_SECRET}


def chat(gw, key, model="up/gpt-4o-mini", **body):
    return httpx.post(
        gw.v1 + "/chat/completions",
        timeout=10,
        headers={"Authorization": f"Bearer {key}"},
        json={"model": model, "messages": MSG, **body},
    )


def setup(live_gateway, fake, clients, **extra):
    return live_gateway(
        {
            "providers": {"up": openai_provider(fake, ["sk-up"])},
            "admin_secret": ADMIN_SECRET,
            "clients": clients,
            **extra,
        }
    )


def test_budget_allowing_exactly_10_of_100_concurrent_requests(live_gateway, fake_openai):
    # each request reserves 100 output tokens at $1 per 1k = $0.10, and really costs that much
    fake_openai.default = Reply(usage=(0, 100))
    pricing = {"up/gpt-4o-mini": {"input_per_mtok": 0, "output_per_mtok": 1000}}
    gw = setup(
        live_gateway,
        fake_openai,
        [{"name": "capped", "key": CLIENT_KEY, "monthly_budget_usd": 1.0}],
        pricing=pricing,
    )

    async def burst():
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:

            async def one():
                return await client.post(
                    gw.v1 + "/chat/completions",
                    headers={"Authorization": f"Bearer {CLIENT_KEY}"},
                    json={"model": "up/gpt-4o-mini", "messages": MSG, "max_tokens": 100},
                )

            return await asyncio.gather(*(one() for _ in range(100)))

    answers = asyncio.run(burst())
    statuses = [a.status_code for a in answers]
    assert statuses.count(200) == 10 and statuses.count(429) == 90
    refused = next(a for a in answers if a.status_code == 429)
    err = refused.json()["error"]
    assert err["code"] == "budget_exceeded" and err["type"] == "insufficient_quota"
    assert refused.headers["x-should-retry"] == "false"
    assert len(fake_openai.calls()) == 10
    usage = httpx.get(gw.base + "/admin/usage", headers=ADMIN).json()
    spent = sum(r["cost_usd"] for r in usage["rows"])
    assert spent == pytest.approx(1.0) and spent <= 1.0 + 1e-9
    assert usage["rows"][0]["name"] == "capped" and usage["rows"][0]["requests"] == 10


def test_failed_requests_release_their_reservation(live_gateway, fake_openai):
    fake_openai.default = Reply(status=500)
    pricing = {"up/gpt-4o-mini": {"input_per_mtok": 0, "output_per_mtok": 1000}}
    gw = setup(
        live_gateway,
        fake_openai,
        [{"name": "capped", "key": CLIENT_KEY, "monthly_budget_usd": 0.1}],
        pricing=pricing,
        retries={"max_attempts": 1, "backoff_base_s": 0.01},
    )
    for _ in range(2):  # (a third failure in a row would cool the only key)
        assert chat(gw, CLIENT_KEY, max_tokens=100).status_code == 502
    fake_openai.default = Reply(usage=(0, 100))
    assert chat(gw, CLIENT_KEY, max_tokens=100).status_code == 200
    assert chat(gw, CLIENT_KEY, max_tokens=100).status_code == 429


def test_rpm_5_sixth_request_gets_429_with_retry_after(live_gateway, fake_openai):
    gw = setup(live_gateway, fake_openai, [{"name": "slow", "key": CLIENT_KEY, "rpm": 5}])
    answers = [chat(gw, CLIENT_KEY) for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 5 + [429]
    for a in answers:
        assert a.headers["x-ratelimit-limit-requests"] == "5"
        assert "x-ratelimit-remaining-requests" in a.headers
        assert "x-ratelimit-reset-requests" in a.headers
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == [
        "4",
        "3",
        "2",
        "1",
        "0",
        "0",
    ]
    last = answers[-1]
    assert last.json()["error"]["code"] == "rate_limit_exceeded"
    assert 55 <= int(last.headers["retry-after"]) <= 60
    assert len(fake_openai.calls()) == 5


def test_tpm_limit(live_gateway, fake_openai):
    fake_openai.default = Reply(usage=(10, 500))
    gw = setup(live_gateway, fake_openai, [{"name": "t", "key": CLIENT_KEY, "tpm": 600}])
    assert chat(gw, CLIENT_KEY, max_tokens=10).status_code == 200
    refused = chat(gw, CLIENT_KEY, max_tokens=100)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"


def test_allowed_models_are_names_as_the_client_sends_them(live_gateway, fake_openai):
    gw = setup(
        live_gateway,
        fake_openai,
        [{"name": "narrow", "key": CLIENT_KEY, "models": ["fast"]}],
        routing={"aliases": {"fast": "up/gpt-4o-mini"}},
    )
    assert chat(gw, CLIENT_KEY, model="fast").status_code == 200
    denied = chat(gw, CLIENT_KEY, model="up/gpt-4o-mini")  # the alias' target by its own name
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "model_not_allowed"
    assert len(fake_openai.calls()) == 1


def test_issued_keys_work_are_stored_hashed_and_revocation_is_quick(live_gateway, fake_openai):
    gw = setup(live_gateway, fake_openai, [{"name": "static", "key": CLIENT_KEY}])
    created = httpx.post(
        gw.base + "/admin/clients", headers=ADMIN, json={"name": "app2", "rpm": 100}
    )
    assert created.status_code == 201
    key, client = created.json()["key"], created.json()["client"]
    assert key.startswith("rg-") and len(key) == 3 + 43
    assert chat(gw, key).status_code == 200
    listed = httpx.get(gw.base + "/admin/clients", headers=ADMIN).json()["data"]
    assert [c["name"] for c in listed] == ["app2"] and key not in str(listed)
    patched = httpx.patch(f"{gw.base}/admin/clients/{client['id']}", headers=ADMIN, json={"rpm": 1})
    assert patched.json()["client"]["rpm"] == 1
    assert httpx.delete(f"{gw.base}/admin/clients/{client['id']}", headers=ADMIN).json() == {
        "id": client["id"],
        "revoked": True,
    }
    assert chat(gw, key).status_code == 401
    dump = "\n".join(sqlite3.connect(gw.db_path).iterdump())
    assert key not in dump
    bad = httpx.post(gw.base + "/admin/clients", headers=ADMIN, json={"name": "", "rpm": -1})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


def test_a_key_revoked_from_the_cli_stops_working_within_a_second(
    live_gateway, fake_openai, tmp_path
):
    gw = setup(live_gateway, fake_openai, [])
    key, client = asyncio.run(gw.gateway.clients.issue("cli-app"))
    assert chat(gw, key).status_code == 200
    env = clean_env(DATABASE_URL=f"sqlite:///{gw.db_path}")
    done = subprocess.run(
        [sys.executable, "-m", "relaygate", "keys", "revoke", client["id"]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    revoked_at = time.monotonic()
    while chat(gw, key).status_code == 200:
        assert time.monotonic() - revoked_at < 1.5, "the revocation did not take effect"
        time.sleep(0.05)
    listed = subprocess.run(
        [sys.executable, "-m", "relaygate", "keys", "list"],
        cwd=tmp_path,
        env=clean_env(DATABASE_URL=f"sqlite:///{gw.db_path}", COLUMNS="200"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "cli-app" in listed.stdout and key not in listed.stdout


def test_keys_create_prints_the_key_once(tmp_path):
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'k.db'}")
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "relaygate",
            "keys",
            "create",
            "--name",
            "n1",
            "--rpm",
            "5",
            "--models",
            "a,b",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert made.returncode == 0, made.stderr
    key = next(w for w in made.stdout.split() if w.startswith("rg-"))
    assert len(key) == 46
    gen = subprocess.run(
        [sys.executable, "-m", "relaygate", "generate-key", "--length", "20"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert len(gen.stdout.strip()) == 23


def test_weekly_key_changes_across_a_week_boundary(live_gateway, fake_openai):
    gw = setup(live_gateway, fake_openai, [], client_key_rotation="weekly")
    now = datetime(2027, 3, 14, 23, 59, 0, tzinfo=UTC)  # a Sunday
    gw.gateway.clients.clock = lambda: now
    info = httpx.get(gw.base + "/current-key", headers=ADMIN).json()
    assert info["expiry"] == "2027-03-15T00:00:00Z" and info["days_remaining"] == 0
    old = info["api_key"]
    assert old.startswith("sk-") and len(old) == 19
    assert chat(gw, old).status_code == 200
    now = now + timedelta(minutes=1)  # Monday 00:00 UTC
    assert chat(gw, old).status_code == 401
    new = httpx.get(gw.base + "/current-key", headers=ADMIN).json()["api_key"]
    assert new != old and chat(gw, new).status_code == 200
    assert httpx.get(gw.base + "/current-key", headers={"admin-secret": "nope"}).status_code == 403
    assert httpx.get(gw.base + "/current-key").status_code == 403


# every route and who may call it; a new route must be added here to pass
INVENTORY = {
    ("GET", "/"): "open",
    ("GET", "/health"): "open",
    ("GET", "/status.json"): "open",
    ("GET", "/static/dashboard.js"): "open",
    ("GET", "/static/dashboard.css"): "open",
    ("GET", "/static/charts.js"): "open",
    ("GET", "/docs"): "open",
    ("GET", "/docs/oauth2-redirect"): "open",
    ("GET", "/redoc"): "open",
    ("GET", "/openapi.json"): "open",
    ("POST", "/v1/chat/completions"): "client",
    ("POST", "/chat/completions"): "client",
    ("GET", "/models"): "client",
    ("POST", "/v1/messages"): "client",
    ("POST", "/v1/messages/count_tokens"): "client",
    ("POST", "/v1/responses"): "client",
    ("POST", "/{version}/models/{model}:generateContent"): "client",
    ("POST", "/{version}/models/{model}:streamGenerateContent"): "client",
    ("POST", "/{version}/models/{model}:countTokens"): "client",
    ("POST", "/v1/embeddings"): "client",
    ("POST", "/embeddings"): "client",
    ("POST", "/{version}/models/{model}:embedContent"): "client",
    ("POST", "/{version}/models/{model}:batchEmbedContents"): "client",
    ("GET", "/v1beta/models"): "client",
    ("GET", "/v1/models"): "client",
    ("GET", "/keys/status"): "client",
    ("POST", "/v1/audio/transcriptions"): "client",
    ("POST", "/audio/transcriptions"): "client",
    ("POST", "/chat"): "client",
    ("POST", "/chat/json"): "client",
    ("POST", "/v1/generate"): "client",
    ("POST", "/ask"): "client",
    ("POST", "/upload"): "client",
    ("GET", "/current-key"): "admin",
    ("GET", "/admin/keys"): "admin",
    ("POST", "/admin/keys/{key_id}/enable"): "admin",
    ("POST", "/admin/keys/{key_id}/disable"): "admin",
    ("GET", "/admin/clients"): "admin",
    ("POST", "/admin/clients"): "admin",
    ("PATCH", "/admin/clients/{client_id}"): "admin",
    ("DELETE", "/admin/clients/{client_id}"): "admin",
    ("GET", "/admin/usage"): "admin",
    ("GET", "/admin/failures"): "admin",
    ("GET", "/admin/dashboard.json"): "admin",
    ("GET", "/metrics"): "admin",
}


PLACEHOLDERS = {
    "{key_id}": "up:00000000",
    "{client_id}": "x",
    "{version}": "v1beta",
    "{model}": "x",
}


def test_route_inventory_every_route_has_an_access_level(live_gateway, fake_openai):
    gw = setup(live_gateway, fake_openai, [{"name": "c", "key": CLIENT_KEY}])
    app = gw.server.server.config.app
    # routers included in the app are listed by its OpenAPI schema; the docs routes directly
    found = {(m.upper(), path) for path, ops in app.openapi()["paths"].items() for m in ops}
    found |= {
        (method, route.path)
        for route in app.routes
        for method in getattr(route, "methods", None) or ()
        if method != "HEAD"
    }
    assert found == set(INVENTORY), "classify every route in INVENTORY"
    expected = {"open": {200}, "client": {401}, "admin": {403}}
    for (method, path), level in INVENTORY.items():
        for name, value in PLACEHOLDERS.items():
            path = path.replace(name, value)
        url = gw.base + path
        answer = httpx.request(method, url, json={} if method != "GET" else None)
        assert answer.status_code in expected[level], (method, path, answer.status_code)
        if level != "open":  # the door's own error shape: the SPEC's, Anthropic's, Google's
            assert "error" in answer.json()
