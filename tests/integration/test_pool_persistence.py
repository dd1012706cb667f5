"""Key states and usage survive a restart of the server process (SQLite), and
`relaygate upstream check` marks rejected keys invalid in the same store."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import httpx
import yaml

from relaygate.keys.pool import key_id
from tests.conftest import CLIENT_KEY
from tests.fakes._server import free_port
from tests.fakes.openai_upstream import Reply, errors
from tests.integration._proc import clean_env, start_server, stop

BAD, GOOD = "sk-persist-bad-0123456789", "sk-persist-good-0123456789"


def write_config(tmp_path, fake):
    config = {
        "providers": {
            "up": {
                "type": "openai",
                "base_url": fake.base_url,
                "keys": [BAD, GOOD],
                "key_strategy": "round_robin",
                "models": ["gpt-4o-mini"],
            }
        },
        "clients": [{"name": "tests", "key": CLIENT_KEY}],
    }
    path = tmp_path / "relaygate.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def states(port):
    resp = httpx.get(
        f"http://127.0.0.1:{port}/keys/status", headers={"Authorization": f"Bearer {CLIENT_KEY}"}
    )
    return {s["key_id"]: s for s in resp.json()["keys"]}


def chat(port):
    return httpx.post(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        timeout=10,
        headers={"Authorization": f"Bearer {CLIENT_KEY}"},
        json={"model": "up/gpt-4o-mini", "messages": [{"role": "user", "content": "persist me"}]},
    )


def test_key_states_and_usage_survive_a_restart(tmp_path, fake_openai):
    fake_openai.script(BAD, Reply(status=401, error=errors.invalid_key()))
    write_config(tmp_path, fake_openai)
    port = free_port()
    proc = start_server(tmp_path, port)
    try:
        for _ in range(4):
            assert chat(port).status_code == 200
        before = states(port)
    finally:
        stop(proc)
    bad, good = key_id("up", BAD), key_id("up", GOOD)
    assert before[bad]["state"] == "invalid"
    assert before[good]["requests_total"] == 4 and before[good]["tokens_total"] > 0

    port = free_port()
    proc = start_server(tmp_path, port)
    try:
        after = states(port)
        assert after[bad]["state"] == "invalid"
        for field in ("requests_today", "requests_total", "tokens_today", "tokens_total"):
            assert after[good][field] == before[good][field], field
        assert chat(port).status_code == 200
    finally:
        stop(proc)
    assert len(fake_openai.calls(BAD)) == 1  # never tried again after the restart
    dump = "\n".join(sqlite3.connect(tmp_path / "relaygate-data" / "relaygate.db").iterdump())
    assert BAD not in dump and GOOD not in dump and CLIENT_KEY not in dump


def test_upstream_check_marks_rejected_keys_invalid(tmp_path, fake_openai):
    fake_openai.script(BAD, Reply(status=401, error=errors.invalid_key()))
    config = write_config(tmp_path, fake_openai)
    result = subprocess.run(
        [sys.executable, "-m", "relaygate", "upstream", "check", "--config", str(config)],
        cwd=tmp_path,
        env=clean_env(COLUMNS="200"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert key_id("up", BAD) in out and key_id("up", GOOD) in out
    assert "marked invalid" in out and "1 of 2 keys answered ok" in out
    assert BAD not in out + result.stderr and GOOD not in out + result.stderr
    sent = fake_openai.calls()
    assert {c.key for c in sent} == {BAD, GOOD}
    assert all(c.json["max_tokens"] == 1 for c in sent)

    port = free_port()  # the server starts with the verdict
    proc = start_server(tmp_path, port)
    try:
        assert states(port)[key_id("up", BAD)]["state"] == "invalid"
    finally:
        stop(proc)
