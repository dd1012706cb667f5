"""The response cache as the proxy uses it: `lookup` and `store` over the state seam's
ResponseCache (memory LRU, or Redis shared by replicas), each bounded by a short timeout; a
backend that fails or does not answer is skipped (the request is served uncached, `bypass`), one
warning is logged for the outage, and the backend is not asked again for RETRY_S. Coalescing
(`coalesce: true`): the first miss of a key leads, identical misses that arrive while it runs
wait for its entry (bounded by the request deadline) and are served as hits; within one process.

Owns the outage state and the table of misses in flight (one future per key, bounded by the
requests in flight)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from relaygate.cache.entry import Entry
from relaygate.cache.key import cache_key
from relaygate.state.protocols import ResponseCache
from relaygate.state.records import StateUnavailable

log = logging.getLogger("relaygate.cache")

TIMEOUT_S = 0.5  # any one backend call, at most
RETRY_S = 2.0  # after a failure, the backend is skipped this long


class Unavailable(Exception):
    """The cache backend failed or did not answer: the request goes on uncached."""


class CacheService:
    def __init__(
        self,
        backend: ResponseCache,
        *,
        ttl_s: float,
        shared: bool,
        coalesce: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.ttl_s = ttl_s
        self.shared = shared
        self.coalesce = coalesce
        self.clock = clock
        self._down_until = 0.0
        self._warned = False
        self._leaders: dict[str, asyncio.Future[Entry | None]] = {}

    def key_for(
        self, *, route: str, body: Mapping[str, Any], client_id: str, model: str | None = None
    ) -> str:
        """The key of a request by `client_id` (left out when the cache is shared). Any door
        whose answer depends only on its JSON body caches with this, `lookup` and `store`
        (an answer kept as the door's own bytes is an Entry with `native=True`)."""
        owner = None if self.shared else client_id
        return cache_key(route=route, body=body, client_id=owner, model=model)

    @property
    def available(self) -> bool:
        return self._down_until <= self.clock()

    async def lookup(self, key: str) -> Entry | None:
        """The live entry of `key`, or None; raises Unavailable when the backend is away. A
        backend in this process's memory is asked without a timeout (it never waits)."""
        if self.backend.local:
            raw = await self.backend.get(key)
        else:
            if not self.available:
                raise Unavailable
            try:
                async with asyncio.timeout(TIMEOUT_S):
                    raw = await self.backend.get(key)
            except (StateUnavailable, TimeoutError, OSError) as exc:
                self._failed(exc)
                raise Unavailable from None
            self._recovered()
        return None if raw is None else Entry.decode(raw)

    async def store(self, key: str, entry: Entry) -> None:
        """Keep `entry` for the ttl; a failing backend is noted, never raised."""
        if not self.available:
            return
        try:
            async with asyncio.timeout(TIMEOUT_S):
                await self.backend.put(key, entry.encode(), self.ttl_s)
        except (StateUnavailable, TimeoutError, OSError) as exc:
            self._failed(exc)
        else:
            self._recovered()

    # --- coalescing ---------------------------------------------------------------------------
    def lead(self, key: str) -> asyncio.Future[Entry | None] | None:
        """None: this miss leads (it must call `done`); else the leader's future to wait on."""
        found = self._leaders.get(key)
        if found is not None:
            return found
        self._leaders[key] = asyncio.get_running_loop().create_future()
        return None

    def done(self, key: str, entry: Entry | None) -> None:
        """The leader's end: its waiters get `entry` (None: they run the request themselves)."""
        future = self._leaders.pop(key, None)
        if future is not None and not future.done():
            future.set_result(entry)

    @staticmethod
    async def wait(future: asyncio.Future[Entry | None], timeout_s: float) -> Entry | None:
        try:
            async with asyncio.timeout(max(0.0, timeout_s)):
                return await asyncio.shield(future)
        except TimeoutError:
            return None

    # --- faults -------------------------------------------------------------------------------
    def _failed(self, exc: BaseException) -> None:
        self._down_until = self.clock() + RETRY_S
        if not self._warned:
            self._warned = True
            log.warning("response cache unavailable (%s): requests are served uncached", _why(exc))

    def _recovered(self) -> None:
        if self._warned:
            self._warned = False
            log.info("response cache is back")

    async def aclose(self) -> None:
        for key in list(self._leaders):
            self.done(key, None)


def _why(exc: BaseException) -> str:
    if isinstance(exc, StateUnavailable):
        return str(exc)
    return "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
