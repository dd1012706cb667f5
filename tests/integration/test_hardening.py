"""Issue 11, item by item, through the real server (SPEC §8a): whole large answers, reservations
that cover the worst case, odd Retry-After values, redacted upstream errors, model names with
control characters, settlement after a bug, bounded metric labels, clients of one name, and a
client leaving a non-streamed request. (Heads and bodies: tests/hostile; faults: tests/faults;
SIGTERM and kill -9 of a real `relaygate serve`: test_shutdown.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from typing import Any

import httpx
import pytest

from relaygate.keys.pool import key_id
from relaygate.state.memory_admissions import utc_month
from tests.conftest import ADMIN_SECRET, CLIENT_KEY, openai_provider
from tests.fakes._server import free_port
from tests.fakes.openai_upstream import Reply

KEY_A, KEY_B = "sk-up-aaaa-0123456789", "sk-up-bbbb-0123456789"
PRICED = {"up/gpt-4o-mini": {"input_per_mtok": 1000, "output_per_mtok": 1000}}  # $0.001/token


def chat(live: Any, body: dict[str, Any], *, key: str = CLIENT_KEY, **kw: Any) -> httpx.Response:
    body = {"model": "up/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **body}
    return httpx.post(
        live.v1 + "/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=kw.pop("timeout", 30),
        **kw,
    )


def state(live: Any, key: str) -> dict[str, Any]:
    kid = key_id("up", key)
    return next(s for s in live.gateway.key_states() if s["key_id"] == kid)


def test_a_5_mib_answer_arrives_whole_on_the_first_key(live_gateway, fake_openai):
    text = "word " * (5 * 1024 * 1024 // 5)
    fake_openai.script(KEY_A, Reply(text=text))
    live = live_gateway({"providers": {"up": openai_provider(fake_openai, [KEY_A, KEY_B])}})
    r = chat(live, {})
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == text
    assert len(fake_openai.calls()) == 1
    assert state(live, KEY_A)["state"] == "ready"


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({"max_completion_tokens": 900, "max_tokens": 10}, 429),  # 0.9 + prompt > 0.5
        ({"max_tokens": 200, "n": 3}, 429),  # 600 tokens of output
        ({}, 429),  # no max: the default 4,096 tokens
        ({"max_tokens": 100.5}, 400),
        ({"max_tokens": True}, 400),
        ({"n": 0}, 400),
        ({"max_completion_tokens": "10"}, 400),
        ({"max_tokens": 100}, 200),
    ],
    ids=["max_completion_tokens", "n", "omitted", "float", "true", "n0", "string", "fits"],
)
def test_reservations_cover_the_worst_case(live_gateway, fake_openai, fields, status):
    client = {"name": "tests", "key": CLIENT_KEY, "monthly_budget_usd": 0.5}
    live = live_gateway(
        {
            "providers": {"up": openai_provider(fake_openai, [KEY_A])},
            "clients": [client],
            "pricing": PRICED,
        }
    )
    r = chat(live, fields)
    assert r.status_code == status, r.text
    if status != 200:
        assert len(fake_openai.calls()) == 0
        err = r.json()["error"]
        assert err["code"] == ("budget_exceeded" if status == 429 else err["code"])
        if status == 400:
            assert err["param"] in fields


ODD = ["inf", "-inf", "nan", "-5", "1e309", "99999999999", "garbage, really", "Wed, 21 Oct 2015"]


@pytest.mark.parametrize("value", ODD)
def test_odd_retry_after_values_fall_back_to_the_default_and_are_capped(
    live_gateway, fake_openai, tmp_path, value
):
    fake_openai.script(KEY_A, Reply(status=429, headers={"retry-after": value}))
    db = tmp_path / "odd.db"
    config = {
        "providers": {
            "up": openai_provider(fake_openai, [KEY_A, KEY_B], key_strategy="round_robin")
        }
    }
    live = live_gateway(config, db_path=db)
    assert chat(live, {}).status_code == 200  # key A refused, key B answered
    a = state(live, KEY_A)
    assert a["state"] == "cooling"
    wait = a["until"] - time.time()
    if value == "99999999999":
        assert 3500 < wait <= 3600  # the 1 h cap
    else:
        assert 50 < wait <= 60  # the default cooldown


def test_a_parked_key_saved_by_an_older_build_comes_back_within_the_caps(
    live_gateway, fake_openai, tmp_path
):
    db = tmp_path / "legacy.db"
    config = {"providers": {"up": openai_provider(fake_openai, [KEY_A, KEY_B])}}
    first = live_gateway(config, db_path=db)
    first.server.stop()
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:  # parked ~3 years, as a build
        conn.execute(  # without caps left it
            "INSERT OR REPLACE INTO upstream_keys (key_id, provider, state, until, reason, "
            "updated_at) VALUES (?, 'up', 'cooling', ?, 'rate limited (429)', 0)",
            (key_id("up", KEY_A), time.time() + 1e8),
        )
    live = live_gateway(config, db_path=db)
    a = state(live, KEY_A)
    assert a["state"] == "cooling"
    assert a["until"] - time.time() <= 3600


def test_an_upstream_error_never_carries_the_key_to_the_client(live_gateway, fake_openai):
    error = {
        "error": {
            "message": f"Incorrect API key provided: {KEY_A}; header Authorization: Bearer "
            "sk-unknown-token-42 at https://user:hunter2pass@api.example/v1",
            "type": f"invalid_request_error {KEY_A}",
            "param": KEY_A,
            "code": f"bad_{KEY_A}",
        }
    }
    fake_openai.script(KEY_A, Reply(status=400, error=error))
    live = live_gateway({"providers": {"up": openai_provider(fake_openai, [KEY_A])}})
    r = chat(live, {})
    assert r.status_code == 400
    answer = r.text + repr(dict(r.headers))
    for secret in (KEY_A, "sk-unknown-token-42", "hunter2pass"):
        assert secret not in answer
    assert r.json()["error"]["param"] == "[redacted]"


@pytest.mark.parametrize(
    "model",
    ["up/gpt-4o-mini\r\nX-Evil: 1", "up/gpt\x00", "up/\x1b[31m", "up/" + "m" * 300, "", "\u2028"],
    ids=["crlf", "nul", "escape", "long", "empty", "line-separator"],
)
def test_model_names_with_control_characters_are_refused_before_any_upstream_call(
    live_gateway, fake_openai, model
):
    live = live_gateway({"providers": {"up": openai_provider(fake_openai, [KEY_A])}})
    r = chat(live, {"model": model})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "model"
    assert fake_openai.calls() == []


def test_a_bug_after_the_upstream_answered_still_settles_the_call(
    live_gateway, fake_openai, monkeypatch
):
    """A fault injected into the provider's parser: the call ends in a 500 in the SPEC's shape,
    its ledger row is written and its budget reservation released."""
    client = {"name": "tests", "key": CLIENT_KEY, "monthly_budget_usd": 100}
    live = live_gateway(
        {
            "providers": {"up": openai_provider(fake_openai, [KEY_A])},
            "clients": [client],
            "pricing": PRICED,
        }
    )

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(live.gateway.providers["up"], "parse_response", broken)
    r = chat(live, {"max_tokens": 50})
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "internal_error"
    budgets = live.gateway.accounting.admissions
    (account,) = budgets._accounts.values()
    assert account.reserved == 0
    rows = wait_rows(live, 1)
    assert [(r["status"], r["error_code"]) for r in rows] == [(500, "internal_error")]


def test_metric_labels_of_made_up_models_stay_bounded(live_gateway, fake_openai):
    live = live_gateway(
        {"providers": {"up": openai_provider(fake_openai, [KEY_A])}, "admin_secret": ADMIN_SECRET}
    )
    for i in range(20):
        assert chat(live, {"model": f"up/made-up-{i}"}).status_code == 200
    assert chat(live, {}).status_code == 200
    text = httpx.get(live.base + "/metrics", headers={"admin-secret": ADMIN_SECRET}).text
    assert "made-up" not in text
    assert 'model="other"' in text
    assert 'model="gpt-4o-mini"' in text


def test_two_clients_with_one_name_share_no_window_and_no_budget(live_gateway, fake_openai):
    other = "rg-test-client-key-other-0123456789abcdefghij"
    clients = [
        {"name": "app", "key": CLIENT_KEY, "rpm": 1, "monthly_budget_usd": 0.2},
        {"name": "app", "key": other, "rpm": 1, "monthly_budget_usd": 0.2},
    ]
    fake_openai.script(KEY_A, Reply(usage=(10, 100)))  # $0.11 a request
    live = live_gateway(
        {
            "providers": {"up": openai_provider(fake_openai, [KEY_A])},
            "clients": clients,
            "pricing": PRICED,
        }
    )
    assert chat(live, {"max_tokens": 50}).status_code == 200
    assert chat(live, {"max_tokens": 50}).status_code == 429  # its own minute is used up
    assert chat(live, {"max_tokens": 50}, key=other).status_code == 200  # not the other's
    ids = [c.id for c in live.gateway.clients._static.values()]
    assert sorted(round(spent_now(live, cid), 6) for cid in ids) == [0.11, 0.11]


class _SilentUpstream:
    """An upstream that reads a request and never answers; it notes when its peer hangs up."""

    def __init__(self) -> None:
        self.port = free_port()
        self.accepted = threading.Event()
        self.closed_at: float | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted.set()
        while await reader.read(65536):
            pass
        self.closed_at = time.monotonic()
        writer.close()

    def stop(self) -> None:
        async def close() -> None:
            self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


def test_a_client_leaving_a_non_streamed_request_cancels_the_upstream_call(live_gateway):
    upstream = _SilentUpstream()
    try:
        provider = {
            "type": "openai",
            "base_url": f"http://127.0.0.1:{upstream.port}/v1",
            "keys": [KEY_A],
            "models": ["gpt-4o-mini"],
            "timeout_s": 60,
        }
        live = live_gateway({"providers": {"up": provider}})
        with pytest.raises(httpx.ReadTimeout):
            chat(live, {}, timeout=httpx.Timeout(10, read=1.0))
        left = time.monotonic()
        assert upstream.accepted.is_set()
        deadline = left + 3
        while upstream.closed_at is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert upstream.closed_at is not None
        assert upstream.closed_at - left < 1.0
        rows = wait_rows(live, 1)
        assert [(r["status"], r["error_code"]) for r in rows] == [(499, "client_closed")]
        assert state(live, KEY_A)["state"] == "ready"
    finally:
        upstream.stop()


# --- helpers ------------------------------------------------------------------------------------
def wait_rows(live: Any, n: int, timeout: float = 5) -> list[dict[str, Any]]:
    """The ledger's rows once `n` are written (the ledger flushes every 250 ms)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.closing(sqlite3.connect(live.db_path)) as conn:
            conn.row_factory = sqlite3.Row
            rows = [dict(r) for r in conn.execute("SELECT * FROM ledger ORDER BY ts")]
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def spent_now(live: Any, client_id: str) -> float:
    """The client's settled spend this month, as the gateway's admissions hold it."""
    month = utc_month(time.time())
    return float(asyncio.run(live.gateway.accounting.admissions.spent(client_id, month)))
