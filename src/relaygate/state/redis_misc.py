"""The response cache and once-only claims in Redis, shared by every replica. The cache keeps a
value under `cache:<key>` for its ttl (Redis expires it; its own maxmemory policy bounds the
whole), refusing values over MAX_VALUE_BYTES and ttls that are not positive, as the memory cache
does (and then dropping what the key held). A claim is `claim:<name>`, set only when absent, for
its ttl: the first caller wins until it expires. Both raise StateUnavailable when Redis is away
(the caller bypasses the cache)."""

from __future__ import annotations

import math

from relaygate.state.redis_db import RedisDB

MAX_VALUE_BYTES = 1 << 20


def _ttl_ms(ttl_s: float) -> int | None:
    """Whole milliseconds of a ttl (at least 1), or None when it is not positive or finite."""
    if not math.isfinite(ttl_s) or ttl_s <= 0:
        return None
    return max(1, math.ceil(ttl_s * 1000))


class RedisCache:
    local = False

    def __init__(self, db: RedisDB) -> None:
        self._db = db
        self._closed = False
        db.attach()

    async def get(self, key: str) -> bytes | None:
        name = self._db.key("cache", key)
        raw = await self._db.run(lambda c: c.get(name))
        return raw if isinstance(raw, bytes) else None

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        name = self._db.key("cache", key)
        ttl = _ttl_ms(ttl_s)
        if ttl is None or len(value) > MAX_VALUE_BYTES:
            await self._db.run(lambda c: c.delete(name))
            return
        await self._db.run(lambda c: c.set(name, value, px=ttl))

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._db.detach()


class RedisClaims:
    def __init__(self, db: RedisDB) -> None:
        self._db = db
        self._closed = False
        db.attach()

    async def claim(self, name: str, ttl_s: float) -> bool:
        key = self._db.key("claim", name)
        ttl = _ttl_ms(ttl_s) or 1
        return bool(await self._db.run(lambda c: c.set(key, b"1", nx=True, px=ttl)))

    async def claimed(self, name: str) -> bool:
        key = self._db.key("claim", name)
        return bool(await self._db.run(lambda c: c.exists(key)))

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._db.detach()
