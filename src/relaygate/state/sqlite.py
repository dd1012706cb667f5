"""The SQLite backend of the durable state: upstream key states and provider pauses, issued
clients (key hashes only) and once-only claims, over one database (`sqlite_db`); the ledger is
in `sqlite_ledger`. `open_sqlite` opens and migrates the file (sync, at start-up). Key events
run the transition they are given (the state package imports no domain rules) inside one write
transaction, which in SQLite holds the whole database: no other writer sees a half-applied
batch. Time is this process's clock (every process sharing the file is on this machine)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from typing import Any

from relaygate.state import Transition
from relaygate.state.protocols import Claims, Clients, KeyStates, LedgerStore
from relaygate.state.records import ClientChanges, ClientRecord, KeyEvent, KeyRecord, Rules
from relaygate.state.sqlite_db import SQLiteDB, open_db
from relaygate.state.sqlite_ledger import SQLiteLedger

# --- upstream keys ------------------------------------------------------------------------------
_KEY_COLUMNS = (
    "key_id",
    "provider",
    "state",
    "until",
    "reason",
    "fail_streak",
    "next_cooldown_s",
    "day",
    "requests_today",
    "tokens_today",
    "requests_total",
    "tokens_total",
)  # KeyRecord's fields, in order
_KEYS = ", ".join(_KEY_COLUMNS)
_SAVE_KEY = (
    f"INSERT INTO upstream_keys ({_KEYS}, updated_at) "  # noqa: S608
    f"VALUES ({', '.join(['?'] * (len(_KEY_COLUMNS) + 1))}) "
    "ON CONFLICT (key_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in (*_KEY_COLUMNS[1:], "updated_at"))
)
_GET_KEY = f"SELECT {_KEYS} FROM upstream_keys WHERE key_id = ?"  # noqa: S608


class SQLiteKeyStates:
    """KeyStates in the `upstream_keys` and `provider_pauses` tables."""

    def __init__(self, db: SQLiteDB, transition: Transition) -> None:
        self._db = db
        self._transition = transition

    async def load(self) -> list[KeyRecord]:
        rows = await self._db.fetch(f"SELECT {_KEYS} FROM upstream_keys ORDER BY key_id")  # noqa: S608
        return [KeyRecord(*row) for row in rows]

    async def save(self, records: Sequence[KeyRecord]) -> None:
        if not records:
            return
        now = time.time()
        params = [(*astuple(r), now) for r in records]
        await self._db.awrite(lambda db: db.executemany(_SAVE_KEY, params))

    async def apply(self, events: Sequence[KeyEvent], rules: Rules) -> list[KeyRecord]:
        if not events:
            return []
        return await self._db.awrite(lambda db: self._apply(db, events, rules))

    def _apply(
        self, db: sqlite3.Connection, events: Sequence[KeyEvent], rules: Rules
    ) -> list[KeyRecord]:
        """Read, transition and write back each touched key, in the caller's transaction."""
        providers: dict[str, str] = {}  # in the order first touched
        for event in events:
            providers.setdefault(event.key_id, event.provider)
        records: dict[str, KeyRecord] = {}
        for key_id, provider in providers.items():
            row = db.execute(_GET_KEY, (key_id,)).fetchone()
            records[key_id] = KeyRecord(*row) if row is not None else KeyRecord(key_id, provider)
        now = time.time()  # after the wait for the write lock
        for event in events:
            records[event.key_id] = self._transition(records[event.key_id], event, now, rules)
        db.executemany(_SAVE_KEY, [(*astuple(records[k]), now) for k in providers])
        return [records[k] for k in providers]

    async def pause(self, provider: str, until: float) -> None:
        sql = (
            "INSERT INTO provider_pauses (provider, until) VALUES (?, ?) ON CONFLICT (provider) "
            "DO UPDATE SET until = MAX(provider_pauses.until, excluded.until)"
        )
        await self._db.awrite(lambda db: db.execute(sql, (provider, float(until))))

    async def pauses(self) -> dict[str, float]:
        rows = await self._db.fetch("SELECT provider, until FROM provider_pauses")
        return {str(provider): float(until) for provider, until in rows}

    async def aclose(self) -> None:
        await self._db.aclose()


# --- clients ------------------------------------------------------------------------------------
_CLIENTS = (  # ClientRecord's fields, in order
    "id, name, key_hash, key_hint, created_at, rpm, tpm, monthly_budget_usd, models, revoked_at"
)
_DUPLICATE = ("SQLITE_CONSTRAINT_PRIMARYKEY", "SQLITE_CONSTRAINT_UNIQUE")


def _client(row: tuple[Any, ...]) -> ClientRecord:
    id_, name, key_hash, key_hint, created_at, rpm, tpm, budget, models, revoked_at = row
    return ClientRecord(
        id=id_,
        name=name,
        key_hash=key_hash,
        key_hint=key_hint,
        created_at=created_at,
        rpm=rpm,
        tpm=tpm,
        monthly_budget_usd=budget,
        models=None if models is None else tuple(str(m) for m in json.loads(models)),
        revoked_at=revoked_at,
    )


def _models(models: Sequence[str] | None) -> str | None:
    return None if models is None else json.dumps(list(models))


class SQLiteClients:
    """Clients in the `clients` table; `models` is stored as a JSON array (text)."""

    def __init__(self, db: SQLiteDB) -> None:
        self._db = db

    async def insert(self, client: ClientRecord) -> None:
        values = (*astuple(client)[:-2], _models(client.models), client.revoked_at)
        sql = f"INSERT INTO clients ({_CLIENTS}) VALUES ({', '.join(['?'] * 10)})"  # noqa: S608

        def work(db: sqlite3.Connection) -> None:
            try:
                db.execute(sql, values)
            except sqlite3.IntegrityError as exc:
                if exc.sqlite_errorname in _DUPLICATE:
                    raise ValueError("a client with this id or key exists already") from None
                raise

        await self._db.awrite(work)

    async def get(self, client_id: str) -> ClientRecord | None:
        rows = await self._db.fetch(f"SELECT {_CLIENTS} FROM clients WHERE id = ?", (client_id,))  # noqa: S608
        return _client(rows[0]) if rows else None

    async def update(self, client_id: str, changes: ClientChanges) -> ClientRecord | None:
        names = sorted(changes.fields & ClientChanges.ALLOWED)  # column names chosen here only
        if not names:
            live = f"SELECT {_CLIENTS} FROM clients WHERE id = ? AND revoked_at IS NULL"  # noqa: S608
            rows = await self._db.fetch(live, (client_id,))
            return _client(rows[0]) if rows else None
        values = [getattr(changes, n) for n in names]
        values = [_models(v) if n == "models" else v for n, v in zip(names, values, strict=True)]
        sql = (
            f"UPDATE clients SET {', '.join(f'{n} = ?' for n in names)} "  # noqa: S608
            f"WHERE id = ? AND revoked_at IS NULL RETURNING {_CLIENTS}"
        )
        rows = await self._db.awrite(lambda db: db.execute(sql, (*values, client_id)).fetchall())
        return _client(rows[0]) if rows else None

    async def revoke(self, client_id: str) -> bool:
        sql = "UPDATE clients SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"
        params = (time.time(), client_id)
        return await self._db.awrite(lambda db: db.execute(sql, params).rowcount > 0)

    async def list(self, *, include_revoked: bool = True) -> list[ClientRecord]:
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        rows = await self._db.fetch(
            f"SELECT {_CLIENTS} FROM clients{where} ORDER BY created_at, id"  # noqa: S608
        )
        return [_client(row) for row in rows]

    async def aclose(self) -> None:
        await self._db.aclose()


# --- claims -------------------------------------------------------------------------------------
_CLAIM = (
    "INSERT INTO claims (name, claimed_at, expires_at) VALUES (?, ?, ?) "
    "ON CONFLICT (name) DO UPDATE SET claimed_at = excluded.claimed_at, "
    "expires_at = excluded.expires_at WHERE claims.expires_at <= excluded.claimed_at "
    "RETURNING name"
)


class SQLiteClaims:
    """Once-only work in the `claims` table: a name is held until it expires."""

    def __init__(self, db: SQLiteDB) -> None:
        self._db = db

    async def claim(self, name: str, ttl_s: float) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            now = time.time()  # after the wait for the write lock
            return bool(db.execute(_CLAIM, (name, now, now + float(ttl_s))).fetchall())

        return await self._db.awrite(work)

    async def claimed(self, name: str) -> bool:
        rows = await self._db.fetch(
            "SELECT 1 FROM claims WHERE name = ? AND expires_at > ?", (name, time.time())
        )
        return bool(rows)

    async def aclose(self) -> None:
        await self._db.aclose()


# --- the backend --------------------------------------------------------------------------------
@dataclass(slots=True)
class SQLiteBackend:
    """The stores of one SQLite file (one SQLiteDB): closing any of them closes it."""

    db: SQLiteDB
    keys: KeyStates
    clients: Clients
    ledger: LedgerStore
    claims: Claims

    async def aclose(self) -> None:
        await self.db.aclose()


def open_sqlite(url: str, transition: Transition) -> SQLiteBackend:
    """The SQLite backend at `url` (sqlite:///path), the file created and migrated now. A URL of
    another kind raises ValueError; a file that cannot be opened, StateUnavailable."""
    db = open_db(url)
    return SQLiteBackend(
        db=db,
        keys=SQLiteKeyStates(db, transition),
        clients=SQLiteClients(db),
        ledger=SQLiteLedger(db),
        claims=SQLiteClaims(db),
    )
