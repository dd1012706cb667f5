"""The SQLite connection of the state backend: one database file, two connections (a writer and
a reader), WAL, the numbered migrations of `relaygate.state.migrations.sqlite` (each applied
once, its number kept in `PRAGMA user_version`), and the mapping of every driver error to
StateUnavailable.

Every write is bounded in time by itself (LOCK_WAIT_S for this process's other writes, BUSY_MS
for a lock held by another process), so no call ever hangs on a locked database. A database
file removed or replaced under the running process is opened anew (and migrated) before the
next call, instead of writing into a file nobody will see again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from relaygate.state.records import StateUnavailable

log = logging.getLogger("relaygate.state")
T = TypeVar("T")

MIGRATIONS = "relaygate.state.migrations.sqlite"
BUSY_MS = 1000  # a write waits this long for a lock held by another process, then fails
LOCK_WAIT_S = 1.0  # ...and this long for this process's other writes
MIGRATE_BUSY_MS = 10_000  # at start-up: another process may be migrating the same file
Params = tuple[Any, ...] | list[Any] | dict[str, Any]


def sqlite_path(url: str) -> Path:
    """The file of a `sqlite:///path` URL (ValueError for any other URL)."""
    if not url.startswith("sqlite:///") or url == "sqlite:///":
        raise ValueError("DATABASE_URL: only sqlite:///path is supported by the SQLite backend")
    return Path(url.removeprefix("sqlite:///"))


def unavailable(exc: BaseException) -> StateUnavailable:
    """What a caller learns of a driver error: the backend and the error's class, no more."""
    return StateUnavailable(f"sqlite: {type(exc).__name__}")


def migrations() -> list[tuple[int, str]]:
    """(number, SQL) of every NNNN_name.sql migration, in order."""
    found = []
    for item in resources.files(MIGRATIONS).iterdir():
        if item.name.endswith(".sql"):
            found.append((int(item.name.split("_", 1)[0]), item.read_text(encoding="utf-8")))
    return sorted(found)


def statements(script: str) -> Iterator[str]:
    """The statements of a script, one by one (executescript would commit the transaction)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""
    if pending.strip():
        yield pending  # the last statement without its semicolon, or comments


def _connect(path: Path, busy_ms: int) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    db.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
    return db


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class SQLiteDB:
    """Two connections: writes go through one (each in a transaction that is rolled back when
    it fails, so a lock held elsewhere never leaves it stuck), reads through the other, so a
    read never waits behind a write that waits for a lock (WAL lets readers in meanwhile).
    Shared by the backend's stores; `aclose` closes it once, whichever store asks first."""

    def __init__(self, path: Path, *, busy_ms: int = BUSY_MS) -> None:
        self.path = path
        self.busy_ms = busy_ms
        self._lock = threading.Lock()  # the writing connection
        self._read_lock = threading.Lock()  # the reading connection
        self._closed = False
        self._open()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = _connect(self.path, MIGRATE_BUSY_MS)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            self._migrate(db)
            db.execute(f"PRAGMA busy_timeout={int(self.busy_ms)}")
            self._reader = _connect(self.path, self.busy_ms)
        except BaseException:
            db.close()
            raise
        self._db = db
        self._file = _identity(self.path)

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """Each migration not applied yet, whole or not at all. The version is read again inside
        the write transaction: a process that waited for another's migration skips it."""
        for number, script in migrations():
            if int(db.execute("PRAGMA user_version").fetchone()[0]) >= number:
                continue
            db.execute("BEGIN IMMEDIATE")
            try:
                if int(db.execute("PRAGMA user_version").fetchone()[0]) < number:
                    for statement in statements(script):
                        db.execute(statement)
                    db.execute(f"PRAGMA user_version={int(number)}")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise

    def _check_file(self) -> None:
        """Called with the write lock held."""
        if self._closed:
            raise sqlite3.ProgrammingError("the state backend is closed")
        if _identity(self.path) == self._file:
            return
        log.warning("the database file was removed or replaced: it is opened anew")
        with self._read_lock:
            for db in (self._db, self._reader):
                with contextlib.suppress(sqlite3.Error):
                    db.close()
            self._open()

    def _acquire(self) -> None:
        if not self._lock.acquire(timeout=LOCK_WAIT_S):
            raise sqlite3.OperationalError("database is busy (another write waits for its lock)")

    def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work` in one write transaction: committed whole, or rolled back and raised."""
        self._acquire()
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

    def read(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """The rows of one query, on the reading connection."""
        if not self._closed and _identity(self.path) != self._file:
            self._acquire()  # the file was replaced: reopen it before reading
            try:
                self._check_file()
            finally:
                self._lock.release()
        with self._read_lock:
            if self._closed:
                raise sqlite3.ProgrammingError("the state backend is closed")
            rows: list[tuple[Any, ...]] = self._reader.execute(sql, params).fetchall()
            return rows

    def close(self) -> None:
        with self._lock, self._read_lock:
            if self._closed:
                return
            self._closed = True
            for db in (self._db, self._reader):
                with contextlib.suppress(sqlite3.Error):
                    db.close()

    # --- the async face ---------------------------------------------------------------------
    async def run(self, work: Callable[..., T], *args: Any) -> T:
        """`work(*args)` in a worker thread; driver and disk errors leave as StateUnavailable
        (any other exception, a ValueError of the caller's, passes unchanged)."""
        try:
            return await asyncio.to_thread(work, *args)
        except (sqlite3.Error, OSError) as exc:
            raise unavailable(exc) from None

    async def awrite(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`write(work)` in a worker thread."""
        return await self.run(self.write, work)

    async def fetch(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        return await self.run(self.read, sql, params)

    async def aclose(self) -> None:
        await self.run(self.close)


def open_db(url: str) -> SQLiteDB:
    """The database of a `sqlite:///path` URL, opened and migrated (sync: at start-up). A file
    that cannot be opened or migrated raises StateUnavailable; a wrong URL, ValueError."""
    path = sqlite_path(url)
    try:
        return SQLiteDB(path)
    except (sqlite3.Error, OSError) as exc:
        raise unavailable(exc) from None
