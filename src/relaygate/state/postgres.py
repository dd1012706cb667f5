"""The Postgres backend of the durable state: upstream key states and provider pauses, issued
clients (key hashes only) and once-only claims, over one pool (`postgres_db`); the ledger is in
`postgres_ledger`. `open_postgres` builds them without connecting: the pool opens, and the
migrations run, on first use. Key events run the transition they are given (the state package
imports no domain rules) inside one transaction that holds the touched keys' rows."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from typing import Any

from psycopg import errors, sql

from relaygate.state import Transition
from relaygate.state.postgres_db import PostgresDB
from relaygate.state.postgres_ledger import PostgresLedger
from relaygate.state.protocols import Claims, Clients, KeyStates, LedgerStore
from relaygate.state.records import (
    ClientChanges,
    ClientRecord,
    KeyEvent,
    KeyRecord,
    Rules,
)

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
    f"VALUES ({', '.join(['%s'] * (len(_KEY_COLUMNS) + 1))}) "
    "ON CONFLICT (key_id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in (*_KEY_COLUMNS[1:], "updated_at"))
)
# Each touched key's row, created when missing and locked (in key order, so two callers never
# wait for each other crosswise) until the transaction ends; the no-op update is what locks a
# row that exists already.
_LOCK_KEYS = (
    "INSERT INTO upstream_keys AS k (key_id, provider, updated_at) "  # noqa: S608
    "SELECT t.key_id, t.provider, %s FROM unnest(%s::text[], %s::text[]) AS t(key_id, provider) "
    'ORDER BY t.key_id COLLATE "C" '
    "ON CONFLICT (key_id) DO UPDATE SET updated_at = k.updated_at "
    f"RETURNING {', '.join(f'k.{c}' for c in _KEY_COLUMNS)}"
)


class PostgresKeyStates:
    """KeyStates in the `upstream_keys` and `provider_pauses` tables."""

    def __init__(self, db: PostgresDB, transition: Transition) -> None:
        self._db = db
        self._transition = transition

    async def load(self) -> list[KeyRecord]:
        rows = await self._db.fetch(f"SELECT {_KEYS} FROM upstream_keys ORDER BY key_id")  # noqa: S608
        return [KeyRecord(*row) for row in rows]

    async def save(self, records: Sequence[KeyRecord]) -> None:
        if not records:
            return
        now = time.time()
        params = [(*astuple(r), now) for r in sorted(records, key=lambda r: r.key_id)]
        async with self._db.connect() as conn, conn.transaction():
            await conn.cursor().executemany(_SAVE_KEY, params)

    async def apply(self, events: Sequence[KeyEvent], rules: Rules) -> list[KeyRecord]:
        if not events:
            return []
        providers: dict[str, str] = {}
        for event in events:
            providers.setdefault(event.key_id, event.provider)
        ids = list(providers)
        async with self._db.connect() as conn, conn.transaction():
            cur = await conn.execute(_LOCK_KEYS, (time.time(), ids, [providers[k] for k in ids]))
            records = {row[0]: KeyRecord(*row) for row in await cur.fetchall()}
            now = time.time()  # after the wait for the rows
            for event in events:
                records[event.key_id] = self._transition(records[event.key_id], event, now, rules)
            params = [(*astuple(records[k]), now) for k in sorted(ids)]
            await cur.executemany(_SAVE_KEY, params)
        return [records[k] for k in ids]

    async def pause(self, provider: str, until: float) -> None:
        await self._db.execute(
            "INSERT INTO provider_pauses AS p (provider, until) VALUES (%s, %s) "
            "ON CONFLICT (provider) DO UPDATE SET until = GREATEST(p.until, EXCLUDED.until)",
            (provider, until),
        )

    async def pauses(self) -> dict[str, float]:
        rows = await self._db.fetch("SELECT provider, until FROM provider_pauses")
        return {str(provider): float(until) for provider, until in rows}

    async def aclose(self) -> None:
        await self._db.aclose()


# --- clients ------------------------------------------------------------------------------------
_CLIENTS = (  # ClientRecord's fields, in order
    "id, name, key_hash, key_hint, created_at, rpm, tpm, monthly_budget_usd, models, revoked_at"
)


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


class PostgresClients:
    """Clients in the `clients` table; `models` is stored as a JSON array (text)."""

    def __init__(self, db: PostgresDB) -> None:
        self._db = db

    async def insert(self, client: ClientRecord) -> None:
        values = (*astuple(client)[:-2], _models(client.models), client.revoked_at)
        async with self._db.connect() as conn:
            try:
                await conn.execute(
                    f"INSERT INTO clients ({_CLIENTS}) VALUES ({', '.join(['%s'] * 10)})",  # noqa: S608
                    values,
                )
            except errors.UniqueViolation:
                raise ValueError("a client with this id or key exists already") from None

    async def get(self, client_id: str) -> ClientRecord | None:
        rows = await self._db.fetch(f"SELECT {_CLIENTS} FROM clients WHERE id = %s", (client_id,))  # noqa: S608
        return _client(rows[0]) if rows else None

    async def update(self, client_id: str, changes: ClientChanges) -> ClientRecord | None:
        names = sorted(changes.fields & ClientChanges.ALLOWED)
        if not names:
            live = f"SELECT {_CLIENTS} FROM clients WHERE id = %s AND revoked_at IS NULL"  # noqa: S608
            rows = await self._db.fetch(live, (client_id,))
            return _client(rows[0]) if rows else None
        values = [getattr(changes, n) for n in names]
        values = [_models(v) if n == "models" else v for n, v in zip(names, values, strict=True)]
        sets = sql.SQL(", ").join(
            sql.SQL("{} = %s").format(sql.Identifier(n)) for n in names
        )  # names from ClientChanges.ALLOWED only
        query = sql.SQL(
            "UPDATE clients SET {} WHERE id = %s AND revoked_at IS NULL RETURNING " + _CLIENTS  # noqa: S608
        ).format(sets)
        rows = await self._db.fetch(query, (*values, client_id))
        return _client(rows[0]) if rows else None

    async def revoke(self, client_id: str) -> bool:
        touched = await self._db.execute(
            "UPDATE clients SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL",
            (time.time(), client_id),
        )
        return touched > 0

    async def aclose(self) -> None:
        await self._db.aclose()

    async def list(self, *, include_revoked: bool = True) -> list[ClientRecord]:
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        rows = await self._db.fetch(
            f"SELECT {_CLIENTS} FROM clients{where} ORDER BY created_at, id"  # noqa: S608
        )
        return [_client(row) for row in rows]


# --- claims -------------------------------------------------------------------------------------
_NOW = "extract(epoch FROM clock_timestamp())::double precision"  # the server's clock


class PostgresClaims:
    """Once-only work in the `claims` table, timed by the server's clock (one for all replicas)."""

    def __init__(self, db: PostgresDB) -> None:
        self._db = db

    async def claim(self, name: str, ttl_s: float) -> bool:
        rows = await self._db.fetch(
            "INSERT INTO claims AS c (name, claimed_at, expires_at) "  # noqa: S608
            f"SELECT %s, now.t, now.t + %s FROM (SELECT {_NOW} AS t) AS now "
            "ON CONFLICT (name) DO UPDATE SET claimed_at = EXCLUDED.claimed_at, "
            "expires_at = EXCLUDED.expires_at WHERE c.expires_at <= EXCLUDED.claimed_at "
            "RETURNING name",
            (name, float(ttl_s)),
        )
        return bool(rows)

    async def claimed(self, name: str) -> bool:
        rows = await self._db.fetch(
            f"SELECT 1 FROM claims WHERE name = %s AND expires_at > {_NOW}",  # noqa: S608
            (name,),
        )
        return bool(rows)

    async def aclose(self) -> None:
        await self._db.aclose()


# --- the backend --------------------------------------------------------------------------------
@dataclass(slots=True)
class PostgresBackend:
    """The stores of one Postgres database (one pool): closing any of them closes it."""

    db: PostgresDB
    keys: KeyStates
    clients: Clients
    ledger: LedgerStore
    claims: Claims

    async def aclose(self) -> None:
        await self.db.aclose()


def open_postgres(url: str, transition: Transition, *, schema: str = "public") -> PostgresBackend:
    """The Postgres backend at `url` (postgresql://...), its tables in `schema`. Connects on
    first use, so this never blocks; a schema name Postgres cannot have raises ValueError."""
    db = PostgresDB(url, schema)
    return PostgresBackend(
        db=db,
        keys=PostgresKeyStates(db, transition),
        clients=PostgresClients(db),
        ledger=PostgresLedger(db),
        claims=PostgresClaims(db),
    )
