"""SPEC §9 reports end to end: traffic through a live gateway, then the daily report to a fake
Telegram Bot API and a fake webhook (sent directly, by the scheduler started with the gateway, and
by `relaygate report --send`), the `relaygate report` tables, GET /admin/usage, and a bad
`reports:` value stopping start-up with one line."""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import yaml

from relaygate.config.model import Config
from relaygate.errors import ConfigError
from relaygate.gateway import Gateway
from relaygate.usage.notifier import (
    MAX_SLEEP_S,
    next_run,
    run_daily_reports,
    send_daily_report,
)
from tests.conftest import ADMIN_SECRET, build_config, openai_provider
from tests.fakes.openai_upstream import Reply
from tests.fakes.telegram import FakeTelegram, FakeWebhook
from tests.integration._proc import clean_env

TOKEN = "7345121987:AAFakeBotTokenForTests-0123456789xyz"
CHAT = "-1001234567890"
ALPHA = "rg-alpha-client-key-000000000000000000000000"
BETA = "rg-beta-client-key-1111111111111111111111111"
ADMIN = {"admin-secret": ADMIN_SECRET}
PRICING = {"up/gpt-4o-mini": {"input_per_mtok": 1000, "output_per_mtok": 2000}}
OK = Reply(usage=(100, 50))  # $0.1 in + $0.1 out = $0.2 per request


@pytest.fixture
def telegram():
    fake = FakeTelegram(TOKEN).start()
    yield fake
    fake.stop()


@pytest.fixture
def webhook():
    fake = FakeWebhook().start()
    yield fake
    fake.stop()


def settings(fake_openai, telegram=None, webhook=None, **reports):
    if telegram is not None:
        reports |= {
            "telegram_bot_token": TOKEN,
            "telegram_chat_id": CHAT,
            "telegram_base_url": telegram.base,
        }
    if webhook is not None:
        reports["webhook_url"] = webhook.base + "/hook/daily"
    return {
        "providers": {"up": openai_provider(fake_openai, ["sk-up-reports"])},
        "clients": [{"name": "alpha", "key": ALPHA}, {"name": "beta", "key": BETA}],
        "admin_secret": ADMIN_SECRET,
        "pricing": PRICING,
        "retries": {"max_attempts": 1, "backoff_base_s": 0.01},
        "reports": reports,
    }


def traffic(gw, fake_openai):
    """alpha: 3 answers; beta: 1 answer and 1 upstream failure (502). Returns today (UTC)."""
    fake_openai.script("sk-up-reports", OK, OK, OK, OK, Reply(status=500), OK)
    for key, status in ((ALPHA, 200), (ALPHA, 200), (ALPHA, 200), (BETA, 200), (BETA, 502)):
        answer = httpx.post(
            gw.v1 + "/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "up/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            timeout=10,
        )
        assert answer.status_code == status, answer.text
    usage = httpx.get(gw.base + "/admin/usage", headers=ADMIN, timeout=10).json()  # flushes
    assert usage["totals"]["requests"] == 5
    return usage["period"]


def check_text(text, day):
    assert text.startswith(f"relaygate usage report: {day} (UTC)")
    assert "Requests: 5 (1 error)" in text
    assert "Tokens: 400 prompt + 200 completion" in text
    assert "Cost: $0.800000" in text
    clients = text.split("Top clients by cost:")[1].split("Top models")[0]
    assert clients.strip().splitlines() == [
        "- alpha: $0.600000, 3 requests, 450 tokens",
        "- beta: $0.200000, 2 requests, 1 error, 150 tokens",
    ]
    assert "- gpt-4o-mini: $0.800000, 5 requests, 1 error, 600 tokens" in text


def check_webhook(payload, day):
    assert payload["type"] == "relaygate.usage_report" and payload["period"] == day
    totals = payload["totals"]
    assert (totals["requests"], totals["errors"]) == (5, 1)
    assert (totals["prompt_tokens"], totals["completion_tokens"]) == (400, 200)
    assert totals["cost_usd"] == pytest.approx(0.8)
    assert [(c["name"], c["requests"]) for c in payload["top_clients"]] == [
        ("alpha", 3),
        ("beta", 2),
    ]
    assert payload["top_clients"][0]["cost_usd"] == pytest.approx(0.6)
    assert payload["top_models"][0]["name"] == "gpt-4o-mini"
    check_text(payload["text"], day)


async def test_send_function_delivers_to_telegram_and_webhook(
    live_gateway, fake_openai, telegram, webhook, caplog
):
    gw = live_gateway(settings(fake_openai, telegram, webhook))
    day = await asyncio.to_thread(traffic, gw, fake_openai)
    # a gateway in this event loop over the same database sends the report
    reporter = Gateway(build_config(settings(fake_openai, telegram, webhook), gw.db_path))
    try:
        caplog.set_level(logging.DEBUG, logger="relaygate")
        sent = await send_daily_report(reporter, day=day)
    finally:
        await reporter.aclose()
    assert [(d.destination, d.ok) for d in sent] == [("telegram", True), ("webhook", True)]
    (message,) = telegram.received()
    assert message.path == f"/bot{TOKEN}/sendMessage"
    assert message.json["chat_id"] == CHAT
    check_text(message.json["text"], day)
    (hook,) = webhook.received()
    assert hook.path == "/hook/daily"
    check_webhook(hook.json, day)
    assert caplog.records and all(TOKEN not in r.getMessage() for r in caplog.records)


async def test_failed_delivery_is_reported_and_retried_without_the_token(
    live_gateway, fake_openai, telegram, webhook, caplog
):
    caplog.set_level(logging.DEBUG, logger="relaygate")
    data = settings(fake_openai, telegram, webhook)
    gw = live_gateway(data)
    reporter = Gateway(build_config(data, gw.db_path))
    waits = []

    async def no_wait(seconds):
        waits.append(seconds)

    try:
        telegram.fail_next = 1
        webhook.fail_next = 5  # more than the retries
        sent = await send_daily_report(reporter, retry_waits=(30, 120), sleep=no_wait)
        assert [(d.destination, d.ok, d.detail) for d in sent] == [
            ("telegram", True, "sent"),
            ("webhook", False, "HTTP 500"),
        ]
        assert waits == [30, 30, 120]
        assert len(telegram.received()) == 2 and len(webhook.received()) == 3
        # a wrong token is refused by the Bot API: reported, never echoed
        reporter.accounting.reports.config.telegram_bot_token = "1:wrong-token-value"
        (bad,) = [d for d in await send_daily_report(reporter) if d.destination == "telegram"]
        assert (bad.ok, bad.detail) == (False, "HTTP 401")
    finally:
        await reporter.aclose()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "report to webhook failed (HTTP 500)" in text
    assert TOKEN not in text and "wrong-token-value" not in text
    assert "/hook/daily" not in text  # the webhook URL is a secret too
    assert TOKEN in Config.model_validate(data).secrets()


def test_the_message_for_an_empty_day(live_gateway, fake_openai, telegram):
    gw = live_gateway(settings(fake_openai, telegram))
    reporter = Gateway(build_config(settings(fake_openai, telegram), gw.db_path))

    async def go():
        try:
            return await send_daily_report(reporter, day="2001-01-01")
        finally:
            await reporter.aclose()

    assert asyncio.run(go())[0].ok
    assert telegram.messages()[0]["text"] == (
        "relaygate usage report: 2001-01-01 (UTC)\nNo requests."
    )


async def test_scheduler_started_with_the_gateway_sends_at_daily_at(
    live_gateway, fake_openai, telegram, webhook
):
    """The real hook in Gateway.start(): its clock is set 1.2 s before 05:30 in Asia/Kolkata
    (00:00 UTC), so the report of the UTC day that just ended (today, in real time) goes out."""
    data = settings(fake_openai, telegram, webhook, daily_at="05:30", timezone="Asia/Kolkata")
    gw = live_gateway(data)
    day = await asyncio.to_thread(traffic, gw, fake_openai)
    midnight = datetime.fromisoformat(day).replace(tzinfo=UTC) + timedelta(days=1)
    offset = midnight.timestamp() - 1.2 - time.time()
    scheduled = Gateway(build_config(data, gw.db_path))
    scheduled.accounting.reports.clock = lambda: time.time() + offset
    await scheduled.start()
    try:
        messages = await asyncio.to_thread(telegram.wait_for, 1, 5.0)
        hooks = await asyncio.to_thread(webhook.wait_for, 1, 5.0)
    finally:
        await scheduled.aclose()
    assert len(messages) == 1 and len(hooks) == 1
    check_text(messages[0].json["text"], day)
    check_webhook(hooks[0].json, day)
    assert messages[0].at - (midnight.timestamp() - offset) < 1.0


async def test_scheduler_clock_time_zone_and_bounded_sleeps(live_gateway, fake_openai, telegram):
    """A fully injected clock: 07:58:30 in Berlin on the day summer time starts. The scheduler
    sleeps in steps of at most MAX_SLEEP_S until 08:00 CEST (06:00 UTC), sends the report of the
    previous UTC day, then waits for 08:00 the next day (24 h later)."""
    data = settings(fake_openai, telegram, daily_at="08:00", timezone="Europe/Berlin")
    gw = live_gateway(data)
    reporter = Gateway(build_config(data, gw.db_path))
    start = datetime(2026, 3, 29, 5, 58, 30, tzinfo=UTC).timestamp()  # 07:58:30 CEST
    now = [start]
    sleeps: list[float] = []

    class Stop(Exception):
        pass

    async def fake_sleep(seconds):
        assert 0 < seconds <= MAX_SLEEP_S
        sleeps.append(seconds)
        now[0] += seconds
        if now[0] > start + 3600:  # well into the wait for the next day: stop here
            raise Stop
        await asyncio.sleep(0)

    task = asyncio.create_task(run_daily_reports(reporter, clock=lambda: now[0], sleep=fake_sleep))
    try:
        with pytest.raises(Stop):
            await asyncio.wait_for(task, 10)
    finally:
        await reporter.aclose()
    first_due = datetime(2026, 3, 29, 6, 0, tzinfo=UTC).timestamp()
    assert sum(sleeps[:2]) == pytest.approx(first_due - start) and sleeps[:2] == [60, 30]
    (message,) = telegram.messages()
    assert message["text"] == "relaygate usage report: 2026-03-28 (UTC)\nNo requests."
    cfg = reporter.accounting.reports.config
    assert next_run(first_due, cfg) == first_due + 86400
    assert next_run(first_due - 0.001, cfg) == first_due


def test_relaygate_report_cli_prints_the_numbers(live_gateway, fake_openai, tmp_path):
    gw = live_gateway(settings(fake_openai))
    day = traffic(gw, fake_openai)
    env = clean_env(DATABASE_URL=f"sqlite:///{gw.db_path}", COLUMNS="200")

    def report(*args):
        done = subprocess.run(
            [sys.executable, "-m", "relaygate", "report", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        rows = {}
        for line in done.stdout.splitlines():
            cells = [c.strip() for c in re.split(r"[│┃|]", line)[1:-1]]
            if len(cells) == 7 and cells[1].isdigit():
                rows[cells[0]] = cells[1:]
        return done.stdout, rows

    out, rows = report()
    assert f"usage {day} by client" in out
    assert rows["alpha"] == ["3", "0", "300", "150", "0.600000", rows["alpha"][-1]]
    assert rows["beta"][:5] == ["2", "1", "100", "50", "0.200000"]
    assert rows["total"][:5] == ["5", "1", "400", "200", "0.800000"]
    _, by_provider = report("--by", "provider", "--day", day)
    assert by_provider["up"][:5] == ["5", "1", "400", "200", "0.800000"]
    _, by_model = report("--by", "model")
    assert by_model["gpt-4o-mini"][:5] == ["5", "1", "400", "200", "0.800000"]
    _, by_key = report("--by", "key")
    (key_id,) = [k for k in by_key if k.startswith("up:")]
    assert by_key[key_id][:5] == ["4", "0", "400", "200", "0.800000"]
    assert by_key["(none)"][:2] == ["1", "1"]  # the failure never got a key
    out, by_month = report("--month", day[:7])
    assert f"usage {day[:7]} by client" in out
    assert by_month["total"][:5] == ["5", "1", "400", "200", "0.800000"]
    # /admin/usage says the same
    usage = httpx.get(gw.base + "/admin/usage", params={"by": "key"}, headers=ADMIN).json()
    assert {r["name"]: r["requests"] for r in usage["rows"]} == {key_id: 4, "(none)": 1}
    assert usage["totals"] == {
        "requests": 5,
        "errors": 1,
        "prompt_tokens": 400,
        "completion_tokens": 200,
        "cached_tokens": 0,
        "cost_usd": pytest.approx(0.8),
    }


def test_relaygate_report_send(live_gateway, fake_openai, telegram, webhook, tmp_path):
    gw = live_gateway(settings(fake_openai))
    day = traffic(gw, fake_openai)
    config = tmp_path / "relaygate.yaml"
    reports = settings(fake_openai, telegram, webhook)["reports"]
    config.write_text(yaml.safe_dump({"reports": reports}))
    env = clean_env(DATABASE_URL=f"sqlite:///{gw.db_path}", COLUMNS="200")
    cmd = [sys.executable, "-m", "relaygate", "report", "--send", "--config", str(config)]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "report to telegram: sent" in done.stdout
    assert "report to webhook: sent" in done.stdout
    check_text(telegram.messages()[0]["text"], day)
    check_webhook(webhook.received()[0].json, day)
    webhook.fail_next = 1
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "report to webhook: failed (HTTP 500)" in done.stdout
    assert TOKEN not in done.stdout + done.stderr
    # nowhere to send: one clear line
    config.write_text(yaml.safe_dump({"reports": {}}))
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"config error: {config}: reports: nowhere to send: set reports.telegram_bot_token "
        "and reports.telegram_chat_id, or reports.webhook_url"
    ]


@pytest.mark.parametrize(
    ("reports", "message"),
    [
        ({"daily_at": "25:00", "webhook_url": "http://127.0.0.1:9/h"}, "reports.daily_at: "),
        ({"daily_at": "8am", "webhook_url": "http://127.0.0.1:9/h"}, "reports.daily_at: "),
        ({"timezone": "Mars/Olympus", "webhook_url": "http://x/h"}, "reports.timezone: "),
        ({"telegram_bot_token": TOKEN}, "reports.telegram_chat_id: required"),
        ({"webhook_url": "ftp://x"}, "reports.webhook_url: must be an http"),
        ({"daily_at": "08:00"}, "reports.daily_at: set reports.telegram_bot_token"),
        ({"dailyat": "08:00"}, "reports.dailyat: Extra inputs are not permitted"),
    ],
)
def test_bad_reports_config_is_refused_in_process(tmp_path, reports, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Gateway(build_config({"reports": reports}, tmp_path / "x.db"))


def test_bad_daily_at_stops_start_up_with_one_line(tmp_path):
    config = tmp_path / "relaygate.yaml"
    config.write_text(
        yaml.safe_dump(
            {"reports": {"daily_at": "25:61", "telegram_bot_token": TOKEN, "telegram_chat_id": 1}}
        )
    )
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'g.db'}", PROXY_API_KEY=ALPHA)
    done = subprocess.run(
        [sys.executable, "-m", "relaygate", "serve", "--port", "0", "--config", str(config)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"config error: {config}: reports.daily_at: must be a time of day like 08:00 "
        "(24-hour HH:MM), got '25:61'"
    ]
    assert TOKEN not in done.stdout + done.stderr
