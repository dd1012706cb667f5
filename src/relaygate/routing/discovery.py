"""Model discovery: each provider's model list, read with one of its keys at start and every
few minutes, in the background (never on a request's path), and handed to the router, which
merges it into its lookup table. Bounded: a few listings at a time, each within a timeout and a
size cap; a provider that fails keeps the list it had."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

import aiohttp

from relaygate.keys.pool import KeyPool
from relaygate.providers.base import Provider
from relaygate.routing.router import Router
from relaygate.transport import Transport, TransportError

log = logging.getLogger("relaygate.routing")
EVERY_S = 300.0
TIMEOUT_S = 10.0
CONCURRENCY = 4
MAX_LIST_BYTES = 8 * 1024 * 1024
MAX_MODELS = 5000  # per provider


def listing_key(pool: KeyPool, needs_key: bool) -> tuple[bool, str | None]:
    """(whether a listing can be asked for, with which key): a ready key first, else any key
    that is not invalid; a provider that needs none asks without one when it has none."""
    usable = [k for k in pool.keys if k.state != "invalid" and k.secret]
    ready = [k for k in usable if k.state == "ready"]
    chosen = ready or usable
    if not chosen:
        return not needs_key, None
    return True, chosen[0].secret


async def list_models(
    provider: Provider, key: str | None, session: Transport, timeout_s: float = TIMEOUT_S
) -> tuple[int | None, list[str] | None]:
    """(status, model ids) of one listing: ids None when it failed (status None: no answer)."""
    request = provider.models_request(key)
    if request is None:
        return None, None
    try:
        async with asyncio.timeout(timeout_s):
            response = await provider.send(session, request, timeout_s=None)
            try:
                body = await response.read(MAX_LIST_BYTES)
            finally:
                response.close()
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError, TransportError) as exc:
        log.info("model list of %s: no answer (%s)", provider.name, type(exc).__name__)
        return None, None
    if response.status >= 400:
        log.info("model list of %s: status %d", provider.name, response.status)
        return response.status, None
    return response.status, provider.parse_models(body)[:MAX_MODELS]


class Discovery:
    def __init__(
        self,
        providers: Mapping[str, Provider],
        pools: Mapping[str, KeyPool],
        router: Router,
        session: Callable[[str], Transport],  # the provider's transport
        every_s: float = EVERY_S,
    ) -> None:
        self.providers = providers
        self.pools = pools
        self.router = router
        self.session = session
        self.every_s = every_s

    async def once(self) -> None:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(name: str) -> None:
            provider, pool = self.providers[name], self.pools[name]
            can, key = listing_key(pool, provider.needs_key)
            if not can or provider.models_request(key) is None:
                return
            async with gate:
                _, found = await list_models(provider, key, self.session(name))
            if found is not None:
                self.router.learn(name, found)

        await asyncio.gather(*(one(name) for name in self.providers))

    async def run(self) -> None:
        while True:
            try:
                await self.once()
            except Exception as exc:  # noqa: BLE001 (a background loop logs and goes on)
                log.warning("model discovery failed: %s", type(exc).__name__)
            await asyncio.sleep(self.every_s)
