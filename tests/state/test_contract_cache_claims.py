"""The ResponseCache contract (memory, Redis) and the Claims contract (memory, SQLite, Postgres,
Redis): a value comes back until its ttl ends; the first claim of a name wins until it expires.
The memory cache's bounds (entries and bytes, least recently used out first) are its own."""

from __future__ import annotations

from relaygate.state.memory import MemoryCache
from tests.state.conftest import Bounded, Clock

TTL_S = 0.4  # short: the real-time backends wait it out


async def test_cache_get_put_overwrite(cache: Bounded) -> None:
    assert await cache.get("k") is None
    await cache.put("k", b"one", 60)
    await cache.put("other", b"\x00\xffbinary", 60)
    assert await cache.get("k") == b"one"
    await cache.put("k", b"two", 60)
    assert await cache.get("k") == b"two"
    assert await cache.get("other") == b"\x00\xffbinary"


async def test_cache_entry_expires_after_its_ttl(cache: Bounded) -> None:
    await cache.put("short", b"v", TTL_S)
    await cache.put("long", b"w", 60)
    assert await cache.get("short") == b"v"
    await cache.advance(TTL_S + 0.3)
    assert await cache.get("short") is None
    assert await cache.get("long") == b"w"


async def test_memory_cache_is_lru_bounded_by_entries() -> None:
    clock = Clock()
    cache = MemoryCache(max_entries=2, max_bytes=1000, clock=clock)
    await cache.put("a", b"1", 60)
    await cache.put("b", b"2", 60)
    assert await cache.get("a") == b"1"  # now b is the least recently used
    await cache.put("c", b"3", 60)
    assert await cache.get("b") is None
    assert (await cache.get("a"), await cache.get("c")) == (b"1", b"3")
    assert len(cache) == 2


async def test_memory_cache_is_bounded_by_bytes() -> None:
    cache = MemoryCache(max_entries=100, max_bytes=10, clock=Clock())
    await cache.put("a", b"123456", 60)
    await cache.put("b", b"1234", 60)
    assert cache.bytes == 10
    await cache.put("c", b"1", 60)  # 11 bytes: a goes
    assert await cache.get("a") is None
    assert cache.bytes == 5
    await cache.put("huge", b"x" * 11, 60)  # larger than the whole cache: not kept
    assert await cache.get("huge") is None
    assert (await cache.get("b"), await cache.get("c")) == (b"1234", b"1")
    await cache.put("b", b"12", 60)  # replaced: its old size is given back
    assert cache.bytes == 3


async def test_memory_cache_drops_what_expired() -> None:
    clock = Clock()
    cache = MemoryCache(max_entries=10, max_bytes=100, clock=clock)
    await cache.put("a", b"123", 5)
    clock.t += 5
    assert await cache.get("a") is None
    assert (len(cache), cache.bytes) == (0, 0)


async def test_first_claim_wins(claims: Bounded) -> None:
    assert await claims.claimed("report:2026-03-14") is False
    assert await claims.claim("report:2026-03-14", 60) is True
    assert await claims.claim("report:2026-03-14", 60) is False
    assert await claims.claimed("report:2026-03-14") is True
    assert await claims.claim("report:2026-03-15", 60) is True


async def test_claim_expires(claims: Bounded) -> None:
    assert await claims.claim("once", TTL_S) is True
    assert await claims.claim("once", TTL_S) is False
    await claims.advance(TTL_S + 0.3)
    assert await claims.claimed("once") is False
    assert await claims.claim("once", 60) is True
    assert await claims.claim("once", 60) is False
