"""The ledger buffer: batched writes to real SQLite, a bounded wait while the database is away,
counted drops past the bound, and a flush at shutdown."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import pytest

from relaygate.keys.policy import apply
from relaygate.state.protocols import LedgerStore
from relaygate.state.records import StateUnavailable
from relaygate.state.sqlite import SQLiteBackend, open_sqlite
from relaygate.usage.ledger import Ledger, LedgerRow


def row(i: int, *, client: str = "app", cost: float = 0.001, status: int = 200) -> LedgerRow:
    return LedgerRow(
        id=f"req_{i}",
        ts=time.time(),
        client=client,
        client_id=client,  # ids and names agree here; tests/integration cover them apart
        route="/v1/chat/completions",
        provider="up",
        model="m",
        key_id="up:12345678",
        status=status,
        error_code=None if status < 400 else "upstream_error",
        latency_ms=12,
        ttft_ms=5,
        prompt_tokens=10,
        completion_tokens=5,
        cost_usd=cost,
    )


class Store:
    """A real SQLite backend, and plain SQL on its file to check what it holds."""

    def __init__(self, path: Any) -> None:
        self.path = path
        self.backend: SQLiteBackend = open_sqlite(f"sqlite:///{path}", apply)
        self.ledger: LedgerStore = self.backend.ledger

    def query(self, sql: str) -> list[dict[str, Any]]:
        with sqlite3.connect(self.path) as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute(sql)]


class FlakySink:
    """A database that is away for the first `down` writes, then a real SQLite ledger."""

    def __init__(self, store: LedgerStore, down: int) -> None:
        self.store, self.down, self.calls = store, down, 0

    async def write(self, rows: Any) -> None:
        self.calls += 1
        if self.calls <= self.down:
            raise StateUnavailable("sqlite: OperationalError")
        await self.store.write(rows)


async def test_batched_rows_and_daily_aggregates(tmp_path):
    store = Store(tmp_path / "l.db")
    ledger = Ledger(store.ledger, batch=7)
    for i in range(20):
        ledger.record(row(i, status=500 if i % 5 == 0 else 200))
    assert ledger.depth == 20
    assert await ledger.flush()
    assert ledger.depth == 0 and ledger.written == 20
    assert store.query("SELECT COUNT(*) AS n FROM ledger")[0]["n"] == 20
    daily = store.query("SELECT requests, errors, prompt_tokens, cost_usd FROM usage_daily")
    assert len(daily) == 1
    assert (daily[0]["requests"], daily[0]["errors"], daily[0]["prompt_tokens"]) == (20, 4, 200)
    assert daily[0]["cost_usd"] == pytest.approx(0.02)
    spend = await store.ledger.month_spend(time.strftime("%Y-%m", time.gmtime()))
    assert spend == {"app": pytest.approx(0.02)}


async def test_rows_wait_while_the_database_is_away_and_nothing_is_lost(tmp_path):
    store = Store(tmp_path / "l.db")
    sink = FlakySink(store.ledger, down=2)
    ledger = Ledger(sink)  # type: ignore[arg-type]
    for i in range(50):
        ledger.record(row(i))
    assert not await ledger.flush()
    assert not await ledger.flush()
    assert ledger.depth == 50
    assert await ledger.flush()
    assert store.query("SELECT COUNT(*) AS n FROM ledger")[0]["n"] == 50
    assert ledger.dropped == 0


async def test_past_the_bound_the_oldest_rows_are_dropped_and_counted(tmp_path):
    store = Store(tmp_path / "l.db")
    drops: list[int] = []
    ledger = Ledger(store.ledger, max_buffer=10, on_drop=drops.append)
    for i in range(25):
        ledger.record(row(i))
    assert ledger.depth == 10 and ledger.dropped == 15 and sum(drops) == 15
    await ledger.close()
    ids = [r["id"] for r in store.query("SELECT id FROM ledger ORDER BY id")]
    assert sorted(ids) == sorted(f"req_{i}" for i in range(15, 25))


def test_a_row_knows_its_utc_day():
    r = row(1)
    r.ts = 1_700_000_000.5  # 2023-11-14 22:13:20 UTC
    assert r.day == "2023-11-14"
    r.ts = 1_700_000_000.0 - 22 * 3600 - 13 * 60 - 21  # one second before that day began
    assert r.day == "2023-11-13"


async def test_daily_aggregates_of_a_mixed_batch_match_row_by_row_sums(tmp_path):
    """Errors are statuses >= 400 or an error code, unless the client went away (client_closed,
    or client_disconnected in rows of older builds); a missing
    client, provider, model or key counts under ''; rows of several days, keys and batches."""
    store = Store(tmp_path / "mixed.db")
    rows = []
    for i in range(2000):
        r = row(i, client=("app", "other", None)[i % 3], cost=0.001 * (i % 7), status=200)
        r.ts = 1_700_000_000.0 + (i % 2) * 86400  # two UTC days
        r.key_id = (None, "up:aaaa", "up:bbbb")[i % 4 % 3]
        r.provider = None if i % 11 == 0 else "up"
        r.status = 502 if i % 13 == 0 else 200
        r.error_code = ("client_closed", "upstream_error", None, "client_disconnected")[i % 7 % 4]
        r.prompt_tokens, r.completion_tokens, r.cached_tokens = i % 17, i % 23, i % 5
        r.latency_ms = i % 29
        rows.append(r)
    await store.ledger.write(rows[:700])
    await store.ledger.write(rows[700:])
    dicts = [_as_dict(r) for r in rows]
    expected: dict[tuple[Any, ...], list[Any]] = {}
    for d in dicts:
        key = (
            d["day"],
            d["client_id"] or "",
            d["provider"] or "",
            d["model"] or "",
            d["key_id"] or "",
        )
        code = d["error_code"]
        error = (d["status"] >= 400 or code is not None) and code not in (
            "client_closed",
            "client_disconnected",
        )
        acc = expected.setdefault(key, [0, 0, 0, 0, 0, 0.0, 0])
        for n, value in enumerate(
            (1, int(error), d["prompt_tokens"], d["completion_tokens"], d["cached_tokens"])
        ):
            acc[n] += value
        acc[5] += d["cost_usd"]
        acc[6] += d["latency_ms"]
    got = {
        (r["day"], r["client_id"], r["provider"], r["model"], r["key_id"]): r
        for r in store.query("SELECT * FROM usage_daily")
    }
    assert set(got) == set(expected)
    for key, acc in expected.items():
        r = got[key]
        assert [
            r["requests"],
            r["errors"],
            r["prompt_tokens"],
            r["completion_tokens"],
            r["cached_tokens"],
        ] == acc[:5]
        assert r["cost_usd"] == pytest.approx(acc[5])
        assert r["latency_ms_sum"] == acc[6]
    assert store.query("SELECT COUNT(*) AS n FROM ledger")[0]["n"] == 2000
    await store.ledger.write(rows[:10])  # ids already written: the ledger keeps one row each
    assert store.query("SELECT COUNT(*) AS n FROM ledger")[0]["n"] == 2000


def _as_dict(r: LedgerRow) -> dict[str, Any]:
    from dataclasses import asdict

    return {**asdict(r), "day": r.day}
