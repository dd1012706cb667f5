"""The SQLite store: numbered migrations, key-state upserts, issued client keys (hashes only).
Calls run in a worker thread so the event loop never waits on the disk."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import operator
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from relaygate.errors import ConfigError
from relaygate.keys.pool import KeyState
from relaygate.usage.ledger import NOT_ERRORS

log = logging.getLogger("relaygate.storage")
T = TypeVar("T")
BUSY_MS = 1000  # a write waits this long for a lock held elsewhere, then fails and is retried
LOCK_WAIT_S = 1.0  # ...and this long for this process's other writes

_KEY_COLUMNS = ("key_id", "provider", *KeyState.PERSISTED)
_CLIENT_COLUMNS = (
    "id",
    "name",
    "key_hash",
    "key_hint",
    "rpm",
    "tpm",
    "monthly_budget_usd",
    "models",
    "created_at",
    "revoked_at",
)


def sqlite_path(url: str) -> Path:
    if not url.startswith("sqlite:///"):
        raise ConfigError(
            f"database_url: only sqlite:///path is supported here, got {url.split(':')[0]}:"
        )
    return Path(url.removeprefix("sqlite:///"))


def _connect(path: Path, busy_ms: int) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    db.row_factory = sqlite3.Row
    db.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
    return db


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class SQLiteStore:
    """Two connections: writes go through one (each in a transaction that is rolled back when
    it fails, so a lock held elsewhere never leaves it stuck), reads through the other, so a
    read never waits behind a write that waits for a lock (WAL lets readers in meanwhile). A
    database file removed or replaced under the running process is opened anew (and migrated)
    before the next write, instead of writing into a file nobody will see again."""

    def __init__(self, path: Path, *, busy_ms: int = BUSY_MS) -> None:
        self.path = path
        self.busy_ms = busy_ms
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # the writing connection
        self._read_lock = threading.Lock()  # the reading connection
        self._open()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = _connect(self.path, self.busy_ms)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._migrate()
        self._reader = _connect(self.path, self.busy_ms)
        self._file = _identity(self.path)

    def _migrate(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        scripts = sorted(
            (
                f
                for f in resources.files("relaygate.storage.migrations").iterdir()
                if f.name.endswith(".sql")
            ),
            key=lambda f: f.name,
        )
        for script in scripts:
            number = int(script.name.split("_", 1)[0])
            if number > version:  # each migration whole or not at all
                sql = script.read_text(encoding="utf-8")
                self._db.executescript(f"BEGIN;\n{sql}\nPRAGMA user_version={number};\nCOMMIT;")

    def _check_file(self) -> None:
        """Called with the write lock held, before a write."""
        if _identity(self.path) == self._file:
            return
        log.warning("the database file was removed or replaced: it is opened anew")
        with self._read_lock:
            for db in (self._db, self._reader):
                with contextlib.suppress(sqlite3.Error):
                    db.close()
            self._open()

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work` in one write transaction: committed whole, or rolled back and raised. Bounded
        in time by itself (LOCK_WAIT_S for this process's lock, BUSY_MS for another's), so a
        caller may wait for it to end and then answer with what really happened."""
        if not self._lock.acquire(timeout=LOCK_WAIT_S):
            raise sqlite3.OperationalError("database is busy (another write waits for its lock)")
        try:
            self._check_file()
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                out = work(db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise
            return out
        finally:
            self._lock.release()

    def _read(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        with self._read_lock:
            return self._reader.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._db.close()
            self._reader.close()

    # --- upstream key states --------------------------------------------------------------------
    def load_key_states(self) -> list[dict[str, Any]]:
        rows = self._read(f"SELECT {', '.join(_KEY_COLUMNS)} FROM upstream_keys")
        return [dict(r) for r in rows]

    def save_key_states(self, rows: Iterable[dict[str, Any]]) -> None:
        items = [(*(r.get(c) for c in _KEY_COLUMNS), time.time()) for r in rows]
        if not items:
            return
        cols = ", ".join(_KEY_COLUMNS)
        marks = ", ".join("?" for _ in range(len(_KEY_COLUMNS) + 1))
        updates = ", ".join(f"{c}=excluded.{c}" for c in _KEY_COLUMNS[1:])
        sql = (
            f"INSERT INTO upstream_keys ({cols}, updated_at) VALUES ({marks}) "
            f"ON CONFLICT(key_id) DO UPDATE SET {updates}, updated_at=excluded.updated_at"
        )
        self._write(lambda db: db.executemany(sql, items))

    async def asave_key_states(self, rows: list[dict[str, Any]]) -> None:
        await asyncio.to_thread(self.save_key_states, rows)

    # --- the ledger -----------------------------------------------------------------------------
    def write_ledger(self, rows: list[dict[str, Any]]) -> None:
        self._write(lambda db: _write_ledger(db, rows))

    def month_spend(self, month: str) -> dict[str, float]:
        """Cost per client id in a calendar month (UTC), from the daily aggregates."""
        rows = self._read(
            "SELECT client_id, SUM(cost_usd) FROM usage_daily WHERE day LIKE ? GROUP BY client_id",
            (f"{month}-%",),
        )
        return {str(r[0]): float(r[1] or 0) for r in rows}

    def prune_ledger(self, before_ts: float) -> int:
        return self._write(
            lambda db: int(db.execute("DELETE FROM ledger WHERE ts < ?", (before_ts,)).rowcount)
        )

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return [dict(r) for r in self._read(sql, params)]

    # --- issued client keys (hashes only) -------------------------------------------------------
    def insert_client(self, row: dict[str, Any]) -> None:
        data = dict(row)
        if data.get("models") is not None:
            data["models"] = json.dumps(data["models"])
        cols = ", ".join(_CLIENT_COLUMNS)
        marks = ", ".join(f":{c}" for c in _CLIENT_COLUMNS)
        values = {c: data.get(c) for c in _CLIENT_COLUMNS}
        self._write(lambda db: db.execute(f"INSERT INTO clients ({cols}) VALUES ({marks})", values))

    def list_clients(self, *, include_revoked: bool = True) -> list[dict[str, Any]]:
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        rows = self._read(
            f"SELECT {', '.join(_CLIENT_COLUMNS)} FROM clients{where} ORDER BY created_at"
        )
        out = []
        for r in rows:
            item = dict(r)
            item["models"] = json.loads(item["models"]) if item["models"] else None
            out.append(item)
        return out

    def update_client(self, client_id: str, changes: dict[str, Any]) -> bool:
        allowed = {
            k: v
            for k, v in changes.items()
            if k in ("name", "rpm", "tpm", "monthly_budget_usd", "models")
        }
        if "models" in allowed and allowed["models"] is not None:
            allowed["models"] = json.dumps(allowed["models"])
        if not allowed:
            return bool(
                self.query("SELECT id FROM clients WHERE id=? AND revoked_at IS NULL", (client_id,))
            )
        sets = ", ".join(f"{k}=:{k}" for k in allowed)
        sql = f"UPDATE clients SET {sets} WHERE id=:_id AND revoked_at IS NULL"
        params = {**allowed, "_id": client_id}
        return self._write(lambda db: db.execute(sql, params).rowcount > 0)

    def revoke_client(self, client_id: str) -> bool:
        sql = "UPDATE clients SET revoked_at=? WHERE id=? AND revoked_at IS NULL"
        params = (time.time(), client_id)
        return self._write(lambda db: db.execute(sql, params).rowcount > 0)


_LEDGER_COLUMNS = (
    "id",
    "ts",
    "day",
    "client_id",
    "client",
    "route",
    "provider",
    "model",
    "key_id",
    "status",
    "error_code",
    "latency_ms",
    "ttft_ms",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost_usd",
    "cache",
    "stream",
    "attempts",
    "estimated",
)
_DAILY_ADD = """
INSERT INTO usage_daily (day, client_id, provider, model, key_id, client, requests, errors,
                         prompt_tokens, completion_tokens, cached_tokens, cost_usd, latency_ms_sum)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (day, client_id, provider, model, key_id) DO UPDATE SET
    client = excluded.client,
    requests = requests + excluded.requests, errors = errors + excluded.errors,
    prompt_tokens = prompt_tokens + excluded.prompt_tokens,
    completion_tokens = completion_tokens + excluded.completion_tokens,
    cached_tokens = cached_tokens + excluded.cached_tokens,
    cost_usd = cost_usd + excluded.cost_usd,
    latency_ms_sum = latency_ms_sum + excluded.latency_ms_sum
"""
_LEDGER_VALUES = operator.itemgetter(*_LEDGER_COLUMNS)
_DAILY_KEY = operator.itemgetter("client_id", "provider", "model", "key_id")
_ROWS_PER_INSERT = 400  # 8,000 bound values, under SQLite's limit (32,766 since 3.32)


def _write_ledger(db: sqlite3.Connection, rows: list[dict[str, Any]]) -> None:
    """In the caller's transaction: the rows in multi-row INSERTs (one statement per 400 rows
    instead of one per row: the GIL is released and retaken per statement), and the daily
    aggregates added once per (day, client, provider, model, key) instead of once per row. A
    row counts as an error when its status is >= 400 or it has an error code, unless the code
    says the client went away (client_closed)."""
    daily: dict[tuple[Any, ...], list[Any]] = {}
    for r in rows:
        client_id, provider, model, key_id = _DAILY_KEY(r)
        key = (r["day"], client_id or "", provider or "", model or "", key_id or "")
        code = r["error_code"]
        error = int((r["status"] >= 400 or code is not None) and code not in NOT_ERRORS)
        acc = daily.get(key)
        if acc is None:
            daily[key] = [
                r["client"] or "",
                1,
                error,
                r["prompt_tokens"],
                r["completion_tokens"],
                r["cached_tokens"],
                r["cost_usd"],
                r["latency_ms"],
            ]
        else:
            acc[0] = r["client"] or ""  # the name the client has now
            acc[1] += 1
            acc[2] += error
            acc[3] += r["prompt_tokens"]
            acc[4] += r["completion_tokens"]
            acc[5] += r["cached_tokens"]
            acc[6] += r["cost_usd"]
            acc[7] += r["latency_ms"]
    cols = ", ".join(_LEDGER_COLUMNS)
    one = "(" + ", ".join("?" * len(_LEDGER_COLUMNS)) + ")"
    for i in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[i : i + _ROWS_PER_INSERT]
        values = list(itertools.chain.from_iterable(map(_LEDGER_VALUES, chunk)))
        sql = f"INSERT OR IGNORE INTO ledger ({cols}) VALUES " + ", ".join([one] * len(chunk))
        db.execute(sql, values)
    db.executemany(_DAILY_ADD, [(*key, *acc) for key, acc in daily.items()])


def open_store(database_url: str) -> SQLiteStore:
    return SQLiteStore(sqlite_path(database_url))
