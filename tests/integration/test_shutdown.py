"""Shutdown and crashes of a real `relaygate serve` (SPEC §8a): SIGTERM lets a stream that ends
within `shutdown_grace_s` finish, ends one that does not with an error event, flushes the ledger
and exits 0 without a traceback; `kill -9` under load loses at most the last 500 ms of rows."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import CLIENT_KEY
from tests.fakes._server import free_port
from tests.fakes.openai_upstream import FakeOpenAI, Reply
from tests.integration._proc import start_server, stop

KEY = "sk-up-shutdown-0123456789"


def serve(tmp_path: Path, fake: FakeOpenAI, grace_s: float) -> tuple[Any, int, Path]:
    db = tmp_path / "rg.db"
    config = {
        "providers": {
            "up": {"type": "openai", "base_url": fake.base_url, "keys": [KEY], "models": ["m"]}
        },
        "clients": [{"name": "tests", "key": CLIENT_KEY}],
        "database_url": f"sqlite:///{db}",
        "server": {"shutdown_grace_s": grace_s},
    }
    path = tmp_path / "relaygate.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    return start_server(tmp_path, port, "--config", str(path)), port, db


def rows(db: Path) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM ledger")]


def stream_events(port: int, into: list[str], started: threading.Event) -> None:
    body = {"model": "up/m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream(
        "POST",
        f"http://127.0.0.1:{port}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {CLIENT_KEY}"},
        timeout=30,
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                into.append(line[6:])
                started.set()


@pytest.mark.parametrize(("grace", "chunks", "ends"), [(1, 60, "error"), (6, 6, "done")])
def test_sigterm_finishes_or_ends_streams_and_exits_cleanly(tmp_path, grace, chunks, ends):
    fake = FakeOpenAI().start()
    try:
        fake.script(KEY, Reply(chunks=chunks, chunk_delay_s=0.25))
        proc, port, db = serve(tmp_path, fake, grace)
        events: list[str] = []
        started = threading.Event()
        reader = threading.Thread(target=stream_events, args=(port, events, started))
        reader.start()
        assert started.wait(10)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        reader.join(20)
        assert not reader.is_alive()
        out, err = stop(proc)
        assert proc.returncode == 0, err[-2000:]
        assert time.monotonic() - sent < grace + 5
        assert "Traceback" not in err + out
        if ends == "done":
            assert events[-1] == "[DONE]"
            codes = {r["error_code"] for r in rows(db)}
            assert codes == {None}
        else:
            last = json.loads(events[-1])
            assert last["error"]["code"] == "shutting_down"
            assert "[DONE]" not in events
            assert [r["error_code"] for r in rows(db)] == ["shutting_down"]
    finally:
        fake.stop()


def test_kill_9_under_load_loses_at_most_the_last_500_ms_of_rows(tmp_path):
    fake = FakeOpenAI().start()
    try:
        proc, port, db = serve(tmp_path, fake, 1)
        done: list[tuple[str, float]] = []
        stop_at = time.monotonic() + 2.5

        def load() -> None:
            with httpx.Client(timeout=5) as client:
                while time.monotonic() < stop_at:
                    try:
                        r = client.post(
                            f"http://127.0.0.1:{port}/v1/chat/completions",
                            json={"model": "up/m", "messages": [{"role": "user", "content": "x"}]},
                            headers={"Authorization": f"Bearer {CLIENT_KEY}"},
                        )
                    except httpx.HTTPError:
                        return
                    if r.status_code == 200:
                        done.append((r.headers["x-request-id"], time.monotonic()))

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        proc.kill()
        killed = time.monotonic()
        for t in threads:
            t.join(10)
        proc.communicate(timeout=10)
        written = {r["id"] for r in rows(db)}
        missing = [at for rid, at in done if rid not in written]
        assert len(done) > 50
        assert all(killed - at < 0.5 + 0.1 for at in missing), (
            f"{len(missing)} rows lost, the oldest {killed - min(missing):.2f} s before the kill"
        )
    finally:
        fake.stop()
