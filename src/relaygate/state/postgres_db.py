"""The Postgres connection of the state backend: one psycopg_pool.AsyncConnectionPool per
backend, opened on first use (the backend is built at start-up, outside any event loop), its
schema created when missing and the numbered migrations applied once, whatever the number of
replicas starting together.

Every call is bounded: 2 s to connect, 2 s to wait for a pooled connection, 5 s per statement
and CALL_TIMEOUT_S for the whole call. Every driver or pool error, and every timeout, leaves
`connect()` as StateUnavailable naming only the error class (never a URL, password or SQL). A
pooled connection is pinged before it is handed out, so one the server dropped is replaced
instead of failing the next call."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql
from psycopg.abc import Params
from psycopg.abc import QueryNoTemplate as Query
from psycopg_pool import AsyncConnectionPool, PoolClosed

from relaygate.state.records import StateUnavailable

Connection = psycopg.AsyncConnection[tuple[Any, ...]]

MIGRATIONS = "relaygate.state.migrations.postgres"
POOL_MIN, POOL_MAX = 1, 10
CONNECT_TIMEOUT_S = 2  # libpq's connect_timeout (whole seconds)
POOL_WAIT_S = 2.0  # waiting for a free pooled connection
STATEMENT_TIMEOUT_MS = 5000  # the server's statement_timeout, per statement
IDLE_IN_TRANSACTION_MS = 10_000  # a replica stuck mid-transaction gives its row locks back
RECONNECT_S = 10.0  # the pool retries a failed connection this long, then one is made on demand
CALL_TIMEOUT_S = 8.0  # a whole call: the wait for a connection, its statements, some slack
# the pool warns at every failed reconnection attempt; the ledger says once that rows wait
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

_ERRORS = (psycopg.Error, OSError, TimeoutError)  # PoolTimeout/PoolClosed are psycopg.Errors


def unavailable(exc: BaseException) -> StateUnavailable:
    """What a caller learns of a driver error: the backend and the error's class, no more."""
    return StateUnavailable(f"postgres: {type(exc).__name__}")


def migrations() -> list[tuple[int, str]]:
    """(number, SQL) of every NNNN_name.sql migration, in order."""
    found = []
    for item in resources.files(MIGRATIONS).iterdir():
        if item.name.endswith(".sql"):
            found.append((int(item.name.split("_", 1)[0]), item.read_text(encoding="utf-8")))
    return sorted(found)


async def _live_connection(pool: AsyncConnectionPool[Connection]) -> Connection:
    """A pooled connection that answers. One the server dropped (a restart, a failover, a
    terminated backend) goes back to be replaced, the others idle in the pool are checked at
    once, and another is taken: a call fails only when its connection is lost during it. (The
    pool's own `check` callback would wait a second or more per dead connection it meets.)"""
    conn = await pool.getconn()
    try:
        await conn.execute("")
        return conn
    except psycopg.OperationalError:
        await pool.putconn(conn)
    await pool.check()
    return await pool.getconn()


def _lock_key(schema: str) -> int:
    """The advisory lock that serialises migrating one schema (a signed 64-bit number)."""
    digest = hashlib.blake2b(f"relaygate.state.migrate:{schema}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


class PostgresDB:
    """The pool, the schema and the migrations, shared by the backend's stores."""

    def __init__(self, url: str, schema: str = "public") -> None:
        if not schema or len(schema.encode()) > 63 or "\x00" in schema:
            raise ValueError("postgres_schema must be a name of 1 to 63 bytes")
        self._url = url
        self.schema = schema
        self._pool: AsyncConnectionPool[Connection] | None = None
        self._lock: asyncio.Lock | None = None
        self._ready = False
        self._closed = False

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[Connection]:
        """A pooled connection in autocommit (`conn.transaction()` groups statements), for one
        call bounded by CALL_TIMEOUT_S. Driver errors and timeouts leave as StateUnavailable;
        any other exception (a ValueError of the caller's) passes unchanged."""
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                pool = await self._ready_pool()
                conn = await _live_connection(pool)
                try:
                    yield conn
                finally:
                    await pool.putconn(conn)  # rolled back, or replaced when broken
        except _ERRORS as exc:
            raise unavailable(exc) from None

    async def fetch(self, query: Query, params: Params = ()) -> list[tuple[Any, ...]]:
        """The rows of one statement (autocommit)."""
        async with self.connect() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall()

    async def execute(self, query: Query, params: Params = ()) -> int:
        """One statement (autocommit); the number of rows it touched."""
        async with self.connect() as conn:
            cur = await conn.execute(query, params)
            return cur.rowcount

    async def aclose(self) -> None:
        """Close the pool (once; later calls do nothing, and later uses are StateUnavailable)."""
        if self._closed:
            return
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(Exception):
                await pool.close(timeout=2.0)

    # --- first use ---------------------------------------------------------------------------
    async def _ready_pool(self) -> AsyncConnectionPool[Connection]:
        pool = self._pool
        if self._ready and pool is not None:
            return pool
        if self._closed:
            raise PoolClosed("the state backend is closed")
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._closed:
                raise PoolClosed("the state backend is closed")
            if self._pool is None:
                self._pool = self._new_pool()
                await self._pool.open(wait=False)
            if not self._ready:
                await self._migrate(self._pool)
                self._ready = True
            return self._pool

    def _new_pool(self) -> AsyncConnectionPool[Connection]:
        options = (
            f"-c statement_timeout={STATEMENT_TIMEOUT_MS} "
            f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}"
        )
        return AsyncConnectionPool(
            self._url,
            min_size=POOL_MIN,
            max_size=POOL_MAX,
            open=False,
            timeout=POOL_WAIT_S,
            reconnect_timeout=RECONNECT_S,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S, "options": options},
            configure=self._configure,
            name="relaygate-state",
        )

    async def _configure(self, conn: Connection) -> None:
        """Each new connection works in the backend's schema."""
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))

    async def _migrate(self, pool: AsyncConnectionPool[Connection]) -> None:
        """Apply the migrations not applied yet, each in its own transaction under an advisory
        lock (a replica that waited for it finds the work done and skips it)."""
        conn = await _live_connection(pool)
        try:
            await self._apply_migrations(conn)
        finally:
            await pool.putconn(conn)

    async def _apply_migrations(self, conn: Connection) -> None:
        cur = await conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
        row = await cur.fetchone()
        applied: set[int] = set()
        if row is not None and row[0]:
            cur = await conn.execute("SELECT version FROM schema_migrations")
            applied = {int(r[0]) for r in await cur.fetchall()}
        for number, script in migrations():
            if number in applied:
                continue
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(self.schema),))
                await self._create_schema(conn)
                cur = await conn.execute(
                    "SELECT 1 FROM schema_migrations WHERE version = %s", (number,)
                )
                if await cur.fetchone() is not None:
                    continue  # another replica applied it while we waited for the lock
                await conn.execute(script.encode())
                await conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (%s, %s)",
                    (number, time.time()),
                )

    async def _create_schema(self, conn: Connection) -> None:
        """The schema (only when missing: CREATE SCHEMA needs a right that using one does not)
        and the table of applied migrations."""
        cur = await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,))
        if await cur.fetchone() is None:
            await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version integer PRIMARY KEY, applied_at double precision NOT NULL)"
        )
