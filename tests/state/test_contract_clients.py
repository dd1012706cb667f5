"""The Clients contract, on memory, SQLite and Postgres: a record round-trips whole, an update
changes only the fields it names (None meaning 'no limit'), revoked clients are neither updated
nor revoked again, the list is in creation order, and an id or key hash is never issued twice."""

from __future__ import annotations

import time

import pytest

from relaygate.state.records import ClientChanges, ClientRecord
from tests.state.conftest import Bounded


def client(n: int, **fields: object) -> ClientRecord:
    base: dict[str, object] = {
        "id": f"cl_{n}",
        "name": f"client {n}",
        "key_hash": f"{n:064x}",
        "key_hint": f"rg-...{n:04d}",
        "created_at": 1_700_000_000.0 + n,
    }
    return ClientRecord(**{**base, **fields})  # type: ignore[arg-type]


async def test_insert_get_round_trip(clients: Bounded) -> None:
    full = client(1, rpm=60, tpm=10_000, monthly_budget_usd=12.5, models=("a/b", "c/d"))
    bare = client(2)
    await clients.insert(full)
    await clients.insert(bare)
    assert await clients.get("cl_1") == full
    assert await clients.get("cl_2") == bare
    assert await clients.get("cl_9") is None


async def test_duplicates_are_refused_and_change_nothing(clients: Bounded) -> None:
    first = client(1)
    await clients.insert(first)
    with pytest.raises(ValueError):
        await clients.insert(client(1, key_hash="f" * 64))  # the same id
    with pytest.raises(ValueError):
        await clients.insert(client(2, key_hash=first.key_hash))  # the same key hash
    assert await clients.get("cl_1") == first
    assert await clients.get("cl_2") is None
    assert await clients.list() == [first]


async def test_update_changes_only_the_fields_named(clients: Bounded) -> None:
    await clients.insert(client(1, rpm=60, tpm=1000, monthly_budget_usd=5.0, models=("m",)))
    changes = ClientChanges(fields=frozenset({"rpm", "name"}), name="renamed", rpm=None, tpm=7)
    updated = await clients.update("cl_1", changes)
    want = client(1, name="renamed", rpm=None, tpm=1000, monthly_budget_usd=5.0, models=("m",))
    assert updated == want
    assert await clients.get("cl_1") == want
    changes = ClientChanges(
        fields=frozenset({"models", "monthly_budget_usd"}), models=("x", "y"), tpm=1
    )
    updated = await clients.update("cl_1", changes)
    assert updated is not None
    assert (updated.models, updated.monthly_budget_usd, updated.tpm) == (("x", "y"), None, 1000)
    updated = await clients.update("cl_1", ClientChanges(fields=frozenset({"models"})))
    assert updated is not None and updated.models is None  # every model again
    unchanged = await clients.update("cl_1", ClientChanges(fields=frozenset()))
    assert unchanged == await clients.get("cl_1")
    assert await clients.update("cl_9", ClientChanges(fields=frozenset({"rpm"}), rpm=1)) is None


async def test_revoke_once_and_no_update_after(clients: Bounded) -> None:
    await clients.insert(client(1, rpm=5))
    before = time.time()
    assert await clients.revoke("cl_1") is True
    revoked = await clients.get("cl_1")
    assert revoked is not None and revoked.revoked_at is not None
    assert before - 1 <= revoked.revoked_at <= time.time() + 1
    assert await clients.revoke("cl_1") is False
    assert await clients.revoke("cl_9") is False
    assert await clients.update("cl_1", ClientChanges(fields=frozenset({"rpm"}), rpm=9)) is None
    after = await clients.get("cl_1")
    assert after is not None and after.rpm == 5 and after.revoked_at == revoked.revoked_at


async def test_list_in_creation_order(clients: Bounded) -> None:
    for n in (3, 1, 2):
        await clients.insert(client(n))
    assert [c.id for c in await clients.list()] == ["cl_1", "cl_2", "cl_3"]
    await clients.revoke("cl_2")
    assert [c.id for c in await clients.list(include_revoked=False)] == ["cl_1", "cl_3"]
    assert [c.id for c in await clients.list()] == ["cl_1", "cl_2", "cl_3"]
