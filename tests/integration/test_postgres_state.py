"""SPEC §11: with a `postgresql://` DATABASE_URL, issued clients and the ledger live in Postgres:
the server issues and checks keys there, writes every request's row there, and `relaygate keys`,
`/admin/*`, `relaygate report` and the dashboard read it. Each test module gets a database of its
own on the machine's PostgreSQL (127.0.0.1:5432), dropped at the end."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psycopg
import pytest

from tests.conftest import ADMIN_SECRET
from tests.fakes.openai_upstream import FakeOpenAI, Reply
from tests.integration._proc import clean_env
from tests.pg import fresh_database

ADMIN = {"Authorization": f"Bearer {ADMIN_SECRET}"}


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


def _cli(*args: str, url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = clean_env(DATABASE_URL=url, ADMIN_SECRET=ADMIN_SECRET, COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "relaygate", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_clients_ledger_reports_and_dashboard_live_in_postgres(
    live_gateway, fake_openai: FakeOpenAI, pg_url: str, tmp_path: Path
) -> None:
    # a key issued by the CLI into Postgres...
    made = _cli("keys", "create", "--name", "pg-app", "--rpm", "50", url=pg_url, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    key = next(line.strip() for line in made.stdout.splitlines() if line.strip().startswith("rg-"))
    # ...is accepted by a server on the same database
    fake_openai.default = Reply(usage=(7, 3))
    gw = live_gateway(
        {
            "database_url": pg_url,
            "admin_secret": ADMIN_SECRET,
            "providers": {
                "up": {"type": "openai", "base_url": fake_openai.base_url, "keys": ["sk-up-1"]}
            },
            "pricing": {"up/gpt-4o-mini": {"input_per_mtok": 1000, "output_per_mtok": 2000}},
        },
        with_client=False,
    )
    client = openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0)
    for _ in range(3):
        answer = client.chat.completions.create(
            model="up/gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
        )
        assert answer.usage is not None and answer.usage.total_tokens == 10
    # the rows are in Postgres itself
    deadline = time.monotonic() + 5
    rows: list[tuple[object, ...]] = []
    while time.monotonic() < deadline:
        with psycopg.connect(pg_url) as db:
            rows = db.execute(
                "SELECT client, status, prompt_tokens, completion_tokens, cost_usd FROM ledger"
            ).fetchall()
        if len(rows) == 3:
            break
        time.sleep(0.1)
    assert len(rows) == 3 and all(r[0] == "pg-app" and r[1] == 200 for r in rows)
    assert sum(float(r[4]) for r in rows) == pytest.approx(3 * (7 * 0.001 + 3 * 0.002))
    # /admin/clients and /admin/usage read it
    listed = httpx.get(gw.base + "/admin/clients", headers=ADMIN).json()["data"]
    assert [c["name"] for c in listed] == ["pg-app"]
    assert listed[0]["spent_this_month_usd"] == pytest.approx(3 * 0.013)
    usage = httpx.get(gw.base + "/admin/usage", headers=ADMIN).json()
    assert usage["rows"][0]["name"] == "pg-app" and usage["rows"][0]["requests"] == 3
    # the dashboard's numbers come from it
    status = httpx.get(gw.base + "/status.json").json()
    assert status["today"]["requests"] == 3
    assert sum(m["requests"] for m in status["minutes"]) == 3
    # a client created over the admin API is in Postgres; the CLI lists and revokes it
    made = httpx.post(gw.base + "/admin/clients", headers=ADMIN, json={"name": "second"})
    assert made.status_code == 201
    listing = _cli("keys", "list", url=pg_url, cwd=tmp_path)
    assert listing.returncode == 0 and "second" in listing.stdout and "pg-app" in listing.stdout
    second_id = made.json()["client"]["id"]
    revoked = _cli("keys", "revoke", second_id, url=pg_url, cwd=tmp_path)
    assert revoked.returncode == 0, revoked.stderr
    with psycopg.connect(pg_url) as db:
        (revoked_at,) = db.execute(
            "SELECT revoked_at FROM clients WHERE id = %s", (second_id,)
        ).fetchone()
    assert revoked_at is not None
    # `relaygate report` reads the same numbers
    report = _cli("report", "--by", "client", url=pg_url, cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "pg-app" in report.stdout and "3" in report.stdout
