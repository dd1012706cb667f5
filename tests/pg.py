"""A PostgreSQL database of its own for a test module, on the machine's server (127.0.0.1:5432,
trust auth): created from the `test` database, dropped at the end. With CI=true an unreachable
server fails the test instead of skipping it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def reachable() -> bool:
    try:
        with psycopg.connect(ADMIN_DSN, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def require_postgres() -> None:
    if reachable():
        return
    if os.environ.get("CI") == "true":
        pytest.fail("PostgreSQL on 127.0.0.1:5432 is not reachable (CI=true: it must run)")
    pytest.skip("PostgreSQL on 127.0.0.1:5432 is not reachable")


@contextmanager
def fresh_database(prefix: str = "relaygate_it") -> Iterator[str]:
    """The URL of a new, empty database, dropped (connections and all) afterwards."""
    require_postgres()
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as db:
        db.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
