"""SPEC §9 ledger and metrics end to end: the ledger matches the upstream's own usage (answers,
streams with and without include_usage, cut-off and failing streams, client disconnects,
failures), refusals make no row but are counted, the failure log, /metrics, and the ledger's
batching: flushed at a graceful shutdown, waiting while the database is locked."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ADMIN_SECRET, CLIENT_KEY, openai_provider
from tests.fakes._server import free_port
from tests.fakes.openai_upstream import FakeOpenAI, Reply, errors
from tests.integration._proc import clean_env, start_server, stop

ADMIN = {"admin-secret": ADMIN_SECRET}
PRICING = {
    "up/gpt-4o-mini": {"input_per_mtok": 1000, "output_per_mtok": 2000},
    "dead/gpt-4o-mini": {"input_per_mtok": 1000, "output_per_mtok": 2000},
}
IN, OUT = 0.001, 0.002  # USD per token
UP_KEY, DEAD_KEY = "sk-ledger-up-0001", "sk-ledger-dead-0002"
ROUTE = "/v1/chat/completions"


def setup(live_gateway, fake, **extra):
    data = {
        "providers": {
            "up": openai_provider(fake, [UP_KEY], timeout_s=0.5),
            "dead": openai_provider(fake, [DEAD_KEY]),
        },
        "admin_secret": ADMIN_SECRET,
        "pricing": PRICING,
        "retries": {"max_attempts": 2, "backoff_base_s": 0.01, "failure_threshold": 50},
        **extra,
    }
    return live_gateway(data)


def body(stream=False, include_usage=None, model="up/gpt-4o-mini", text="count the tokens"):
    out = {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}
    if include_usage is not None:
        out["stream_options"] = {"include_usage": include_usage}
    return orjson.dumps(out)


def prompt_estimate(raw):
    """The gateway's own prompt estimate: request bytes / 3 + 1 (LimitsConfig defaults)."""
    return int(len(raw) / 3.0) + 1


def post(gw, raw, key=CLIENT_KEY, **kw):
    return httpx.post(
        gw.v1 + "/chat/completions",
        content=raw,
        headers={"Authorization": f"Bearer {key}", "content-type": "application/json"},
        timeout=10,
        **kw,
    )


def events(text):
    """The JSON payloads of an SSE answer, and whether it ended with [DONE]."""
    out, done = [], False
    for line in text.splitlines():
        if line.startswith("data: "):
            if line == "data: [DONE]":
                done = True
            else:
                out.append(orjson.loads(line[6:]))
    return out, done


def contents(chunks):
    return [
        c["choices"][0]["delta"]["content"]
        for c in chunks
        if c.get("choices") and c["choices"][0]["delta"].get("content")
    ]


def ledger(gw):
    """Every ledger row, oldest first (GET /admin/failures flushes the buffer first)."""
    assert httpx.get(gw.base + "/admin/failures", headers=ADMIN, timeout=10).status_code == 200
    with sqlite3.connect(gw.db_path) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM ledger ORDER BY ts")]


def only_row(gw, request_id):
    rows = [r for r in ledger(gw) if r["id"] == request_id]
    assert len(rows) == 1, rows
    return rows[0]


def metrics(gw):
    answer = httpx.get(gw.base + "/metrics", headers=ADMIN, timeout=10)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(answer.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, answer.text


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# --- usage matches the upstream's own --------------------------------------------------------
def test_non_streamed_row_has_the_upstreams_usage(live_gateway, fake_openai):
    gw = setup(live_gateway, fake_openai)
    fake_openai.default = Reply(usage=(123, 45))
    answer = post(gw, body())
    assert answer.status_code == 200
    assert answer.json()["usage"]["prompt_tokens"] == 123
    row = only_row(gw, answer.headers["x-request-id"])
    assert row["client"] == "tests" and row["route"] == ROUTE
    assert (row["provider"], row["model"]) == ("up", "gpt-4o-mini")
    assert row["key_id"] == answer.headers["x-relaygate-key-id"] and row["key_id"].startswith("up:")
    assert (row["status"], row["error_code"], row["attempts"]) == (200, None, 1)
    assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (123, 45, 0)
    assert (row["estimated"], row["stream"], row["cache"]) == (0, 0, "bypass")
    assert row["cost_usd"] == pytest.approx(123 * IN + 45 * OUT)
    assert row["latency_ms"] >= row["ttft_ms"] >= 0
    assert row["day"] == time.strftime("%Y-%m-%d", time.gmtime(row["ts"]))


def test_non_streamed_answer_without_usage_is_estimated(live_gateway, fake_openai):
    gw = setup(live_gateway, fake_openai)
    reply = {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "x" * 400},
                "finish_reason": "stop",
            }
        ],
    }
    fake_openai.default = Reply(body_override=reply)
    raw = body()
    answer = post(gw, raw)
    assert answer.status_code == 200
    row = only_row(gw, answer.headers["x-request-id"])
    assert row["estimated"] == 1
    assert row["prompt_tokens"] == prompt_estimate(raw)
    assert row["completion_tokens"] == len(answer.content) // 4


@pytest.mark.parametrize("include_usage", [True, False, None])
def test_streamed_row_has_the_usage_from_the_stream(live_gateway, fake_openai, include_usage):
    gw = setup(live_gateway, fake_openai)
    fake_openai.default = Reply(usage=(77, 9), chunks=9)
    answer = post(gw, body(stream=True, include_usage=include_usage))
    assert answer.status_code == 200
    chunks, done = events(answer.text)
    assert done and len(contents(chunks)) == 9
    usage = [c["usage"] for c in chunks if c.get("usage")]
    if include_usage:
        assert usage == [
            {
                "prompt_tokens": 77,
                "completion_tokens": 9,
                "total_tokens": 86,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            }
        ]
    else:
        assert usage == []  # the client did not ask: the usage chunk is kept from it
    # the gateway always asks the upstream for usage
    assert fake_openai.calls()[-1].json["stream_options"]["include_usage"] is True
    row = only_row(gw, answer.headers["x-request-id"])
    assert (row["prompt_tokens"], row["completion_tokens"], row["estimated"]) == (77, 9, 0)
    assert (row["stream"], row["status"], row["error_code"]) == (1, 200, None)
    assert row["cost_usd"] == pytest.approx(77 * IN + 9 * OUT)


def test_stream_without_usage_from_the_provider_is_estimated(live_gateway, fake_openai):
    gw = setup(live_gateway, fake_openai)
    fake_openai.default = Reply(usage=(77, 9), chunks=6, usage_chunk=False)
    raw = body(stream=True, include_usage=True)
    answer = post(gw, raw)
    chunks, done = events(answer.text)
    assert done and len(contents(chunks)) == 6
    row = only_row(gw, answer.headers["x-request-id"])
    assert (row["estimated"], row["error_code"]) == (1, None)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt_estimate(raw), 6)


@pytest.mark.parametrize(
    ("reply", "produced"),
    [
        # the chunks are spaced so that the first one reaches the client before the failure
        # (a failure in the very first read is retried instead: nothing was sent yet)
        (Reply(usage=(50, 20), chunks=20, cut_after=4, chunk_delay_s=0.01), 4),  # closed
        (Reply(usage=(50, 20), chunks=20, inband_error_after=3, chunk_delay_s=0.01), 3),
    ],
)
def test_cut_off_stream_is_billed_for_what_was_produced(live_gateway, fake_openai, reply, produced):
    gw = setup(live_gateway, fake_openai)
    fake_openai.default = reply
    raw = body(stream=True, include_usage=True)
    answer = post(gw, raw)
    assert answer.status_code == 200
    chunks, done = events(answer.text)
    assert not done and len(contents(chunks)) == produced
    assert chunks[-1]["error"]["code"] == "upstream_error"
    row = only_row(gw, answer.headers["x-request-id"])
    assert (row["status"], row["error_code"], row["estimated"], row["stream"]) == (
        200,
        "upstream_error",
        1,
        1,
    )
    assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt_estimate(raw), produced)
    assert row["cost_usd"] == pytest.approx(prompt_estimate(raw) * IN + produced * OUT)
    assert row["key_id"] == answer.headers["x-relaygate-key-id"]


def test_client_disconnect_mid_stream_bills_what_was_produced(live_gateway, fake_openai):
    gw = setup(live_gateway, fake_openai)
    fake_openai.default = Reply(usage=(50, 300), chunks=300, chunk_delay_s=0.01)
    raw = body(stream=True)
    seen = 0
    t0 = time.monotonic()
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST",
            gw.v1 + "/chat/completions",
            content=raw,
            headers={"Authorization": f"Bearer {CLIENT_KEY}"},
        ) as answer,
    ):
        request_id = answer.headers["x-request-id"]
        for line in answer.iter_lines():
            if line.startswith("data: ") and contents([orjson.loads(line[6:])]):
                seen += 1
            if seen == 5:
                break
    deadline = time.monotonic() + 5
    rows = []
    while not rows and time.monotonic() < deadline:
        rows = [r for r in ledger(gw) if r["id"] == request_id]
        time.sleep(0.05)
    assert rows, "no ledger row after the client went away"
    row = rows[0]
    assert time.monotonic() - t0 < 3.0 + 0.5  # well before the 300 chunks (3 s) were all sent
    assert (row["estimated"], row["stream"], row["status"]) == (1, 1, 200)
    assert row["error_code"] == "client_closed"
    assert 5 <= row["completion_tokens"] < 300
    assert row["prompt_tokens"] == prompt_estimate(raw)
    assert row["cost_usd"] == pytest.approx(
        row["prompt_tokens"] * IN + row["completion_tokens"] * OUT
    )


# --- failures and refusals -------------------------------------------------------------------
def test_failures_have_rows_refusals_do_not_and_the_failure_log(live_gateway, fake_openai):
    clients = [
        {"name": "tests", "key": CLIENT_KEY},
        {"name": "limited", "key": "rg-limited-key-000000000000000", "rpm": 1},
        {"name": "broke", "key": "rg-broke-key-00000000000000000", "monthly_budget_usd": 0},
        {"name": "picky", "key": "rg-picky-key-00000000000000000", "models": ["other"]},
    ]
    gw = setup(live_gateway, fake_openai, clients=clients)
    fake_openai.script(
        UP_KEY,
        Reply(status=400, error=errors.context_length()),
        Reply(status=500),
        Reply(status=500),
        Reply(hang=True),
        Reply(hang=True),
        Reply(usage=(10, 2)),
    )
    fake_openai.script(DEAD_KEY, Reply(status=401, error=errors.invalid_key()))
    expect = [  # (status, error code, attempts)
        (400, "context_length_exceeded", 1),
        (502, "upstream_error", 2),
        (504, "upstream_timeout", 2),
        (200, None, 1),
    ]
    ids = []
    for status, code, _ in expect:
        answer = post(gw, body())
        assert answer.status_code == status, answer.text
        if code:
            assert answer.json()["error"]["code"] == code
        ids.append(answer.headers["x-request-id"])
    answer = post(gw, body(model="dead/gpt-4o-mini"))
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "no_available_keys"
    ids.append(answer.headers["x-request-id"])
    expect.append((503, "no_available_keys", 1))
    rows_before = ledger(gw)
    assert [r["id"] for r in rows_before] == ids
    for row, (status, code, attempts) in zip(rows_before, expect, strict=True):
        assert (row["status"], row["error_code"], row["attempts"]) == (status, code, attempts)
        assert row["client"] == "tests"
    assert rows_before[-1]["provider"] == "dead"

    # refusals: no upstream call, no row, counted in metrics
    calls = len(fake_openai.calls())
    refusals = [
        (post(gw, body(), key="rg-wrong-key-000000000000000"), 401, "auth"),
        (post(gw, body(), key="rg-limited-key-000000000000000"), 200, None),
        (post(gw, body(), key="rg-limited-key-000000000000000"), 429, "rate_limit"),
        (post(gw, body(), key="rg-broke-key-00000000000000000"), 429, "budget"),
        (post(gw, body(), key="rg-picky-key-00000000000000000"), 403, "model_not_allowed"),
        (post(gw, body(model="nope/unknown-model")), 404, "model_not_found"),
        (post(gw, b'{"model": "up/gpt-4o-mini", "messages": []}'), 400, "invalid"),
    ]
    for answer, status, _ in refusals:
        assert answer.status_code == status, answer.text
    assert len(fake_openai.calls()) == calls + 1  # only the limited client's first request
    rows = ledger(gw)
    assert len(rows) == len(rows_before) + 1 and rows[-1]["client"] == "limited"
    samples, _ = metrics(gw)
    for reason in ("auth", "rate_limit", "budget", "model_not_allowed", "model_not_found"):
        assert value(samples, "relaygate_refusals_total", reason=reason) == 1, reason
    assert value(samples, "relaygate_refusals_total", reason="invalid") == 1

    # the failure log: the failed calls, newest first, with their details and no secret
    answer = httpx.get(gw.base + "/admin/failures", headers=ADMIN, timeout=10)
    failed = answer.json()["data"]
    assert [f["id"] for f in failed] == [ids[4], ids[2], ids[1], ids[0]]
    assert [(f["status"], f["error_code"]) for f in failed] == [
        (503, "no_available_keys"),
        (504, "upstream_timeout"),
        (502, "upstream_error"),
        (400, "context_length_exceeded"),
    ]
    assert {f["provider"] for f in failed} == {"up", "dead"}
    for secret in (UP_KEY, DEAD_KEY, CLIENT_KEY, ADMIN_SECRET, "rg-limited-key"):
        assert secret not in answer.text
    assert httpx.get(gw.base + "/admin/failures", timeout=10).status_code == 403


# --- /metrics ------------------------------------------------------------------------------------
def test_metrics_in_prometheus_format(live_gateway, fake_openai):
    gw = setup(live_gateway, fake_openai)
    fake_openai.script(UP_KEY, Reply(usage=(10, 4)), Reply(usage=(20, 6)), Reply(status=500))
    fake_openai.script(DEAD_KEY, Reply(status=401, error=errors.invalid_key()))
    assert post(gw, body()).status_code == 200
    assert post(gw, body(stream=True)).status_code == 200
    assert post(gw, body()).status_code == 502  # two attempts, both 500
    assert post(gw, body(model="dead/gpt-4o-mini")).status_code == 503
    samples, text = metrics(gw)
    assert "# TYPE relaygate_request_latency_seconds histogram" in text

    def requests(status, provider="up"):
        return value(
            samples,
            "relaygate_requests_total",
            route=ROUTE,
            provider=provider,
            model="gpt-4o-mini",
            status=status,
        )

    assert (requests("200"), requests("502"), requests("503", "dead")) == (2, 1, 1)
    assert value(samples, "relaygate_request_latency_seconds_count", provider="up") == 3
    assert value(samples, "relaygate_request_latency_seconds_bucket", provider="up", le="+Inf") == 3
    assert value(samples, "relaygate_time_to_first_token_seconds_count", provider="up") == 2
    tokens = {
        kind: value(
            samples, "relaygate_tokens_total", provider="up", model="gpt-4o-mini", kind=kind
        )
        for kind in ("prompt", "completion")
    }
    assert tokens == {"prompt": 30, "completion": 10}
    cost = value(samples, "relaygate_cost_usd_total", provider="up", model="gpt-4o-mini")
    assert cost == pytest.approx(30 * IN + 10 * OUT)
    attempts = {
        (provider, outcome): value(
            samples, "relaygate_upstream_attempts_total", provider=provider, outcome=outcome
        )
        for provider, outcome in (("up", "ok"), ("up", "server"), ("dead", "key_rejected"))
    }
    assert attempts == {("up", "ok"): 2, ("up", "server"): 2, ("dead", "key_rejected"): 1}
    assert value(samples, "relaygate_upstream_keys", provider="dead", state="invalid") == 1
    assert value(samples, "relaygate_upstream_keys", provider="up", state="ready") == 1
    assert ("relaygate_ledger_queue_depth", ()) in samples
    assert value(samples, "relaygate_ledger_dropped_rows_total") == 0
    # the ledger agrees with the metrics
    rows = ledger(gw)
    assert sum(r["prompt_tokens"] for r in rows) == 30
    assert sum(r["cost_usd"] for r in rows) == pytest.approx(cost)
    # admin only
    assert httpx.get(gw.base + "/metrics", timeout=10).status_code == 403


# --- batching, shutdown flush, a locked database ---------------------------------------------
def serve_config(tmp_path: Path, fake: FakeOpenAI, **ledger_cfg) -> Path:
    config = tmp_path / "relaygate.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "providers": {"up": openai_provider(fake, [UP_KEY])},
                "clients": [{"name": "tests", "key": CLIENT_KEY}],
                "ledger": ledger_cfg,
            }
        )
    )
    return config


def count_rows(db_path: Path) -> int:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT COUNT(*) FROM ledger").fetchone()[0])


def test_rows_are_written_in_batches_and_flushed_at_graceful_shutdown(tmp_path, fake_openai):
    fake_openai.default = Reply(usage=(5, 3))
    config = serve_config(tmp_path, fake_openai, flush_interval_s=600)
    db_path = tmp_path / "serve.db"
    port = free_port()
    env = clean_env(DATABASE_URL=f"sqlite:///{db_path}")
    proc = start_server(tmp_path, port, "--config", str(config), env=env)
    try:
        with httpx.Client(timeout=10) as client:
            for _ in range(25):
                answer = client.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    headers={"Authorization": f"Bearer {CLIENT_KEY}"},
                    json={
                        "model": "up/gpt-4o-mini",
                        "messages": [{"role": "user", "content": "x"}],
                    },
                )
                assert answer.status_code == 200
        assert count_rows(db_path) == 0  # still in the buffer: nothing written per request
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = stop(proc)
    # uvicorn re-raises the signal once its graceful shutdown is done
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert "Application shutdown complete" in err
    assert count_rows(db_path) == 25
    with sqlite3.connect(db_path) as db:
        daily = db.execute("SELECT SUM(requests), SUM(prompt_tokens) FROM usage_daily").fetchone()
    assert daily == (25, 125)


def test_rows_wait_while_the_database_is_locked(live_gateway, fake_openai):
    gw = setup(live_gateway, fake_openai, ledger={"flush_interval_s": 0.1})
    fake_openai.default = Reply(usage=(5, 3))
    locked, release = threading.Event(), threading.Event()

    def hold_lock():
        db = sqlite3.connect(gw.db_path, isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
        locked.set()
        release.wait(10)
        db.execute("COMMIT")
        db.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(5)
        lock_start = time.monotonic()
        slowest = 0.0
        with httpx.Client(timeout=10) as client:
            while time.monotonic() - lock_start < 1.5:
                t = time.monotonic()
                answer = client.post(
                    gw.v1 + "/chat/completions",
                    content=body(),
                    headers={"Authorization": f"Bearer {CLIENT_KEY}"},
                )
                assert answer.status_code == 200
                slowest = max(slowest, time.monotonic() - t)
                time.sleep(0.02)
            samples, _ = metrics(gw)
        sent = len(fake_openai.calls())
        assert sent >= 10
        assert count_rows(gw.db_path) == 0  # nothing could be written yet
        assert value(samples, "relaygate_ledger_queue_depth") >= 1
        assert slowest < 0.5  # the request path never waits for the database
    finally:
        release.set()
        holder.join(10)
    deadline = time.monotonic() + 5
    while count_rows(gw.db_path) < sent and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count_rows(gw.db_path) == sent
    samples, _ = metrics(gw)
    assert value(samples, "relaygate_ledger_dropped_rows_total") == 0
    assert value(samples, "relaygate_ledger_queue_depth") == 0


def test_an_admin_read_while_the_database_is_locked_does_not_stall_traffic(
    live_gateway, fake_openai
):
    gw = setup(live_gateway, fake_openai, ledger={"flush_interval_s": 0.05})
    fake_openai.default = Reply(usage=(5, 3))
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    locked = threading.Event()

    def hold_lock():
        db = sqlite3.connect(gw.db_path, isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(1.5)
        db.execute("COMMIT")
        db.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    assert locked.wait(5)
    with httpx.Client(timeout=10) as client:
        first = client.post(gw.v1 + "/chat/completions", content=body(), headers=headers)
        assert first.status_code == 200
        time.sleep(0.2)  # the ledger writer is now waiting for the database
        admin = threading.Thread(
            target=lambda: httpx.get(gw.base + "/admin/clients", headers=ADMIN, timeout=10)
        )
        admin.start()
        time.sleep(0.1)
        t = time.monotonic()
        answer = client.post(gw.v1 + "/chat/completions", content=body(), headers=headers)
        took = time.monotonic() - t
    admin.join(10)
    holder.join(10)
    assert answer.status_code == 200
    assert took < 0.5, f"a client request waited {took:.2f} s for an admin read"


def test_a_stream_that_failed_mid_way_counts_as_an_error_in_the_reports(live_gateway, fake_openai):
    gw = setup(live_gateway, fake_openai)
    fake_openai.default = Reply(chunks=8, cut_after=3, chunk_delay_s=0.01)
    answer = post(gw, body(stream=True))
    assert answer.status_code == 200 and '"upstream_error"' in answer.text
    failed = httpx.get(gw.base + "/admin/failures", headers=ADMIN, timeout=10).json()["data"]
    assert [f["id"] for f in failed] == [answer.headers["x-request-id"]]
    usage = httpx.get(gw.base + "/admin/usage", headers=ADMIN, timeout=10).json()
    assert usage["totals"]["requests"] == 1
    assert usage["totals"]["errors"] == 1
