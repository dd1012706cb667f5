"""A gateway's life around its state: opening the state the config names, what is restored at
start (key states, issued clients, this month's spend), the background work while it runs (key
states synced and saved, issued clients reloaded, ledger rows written and pruned, the daily
report), and the orderly end (a last sync and write, the state closed). A store that does not
answer costs a warning, never the start or the end: the gateway serves with what it has and
catches up when the store returns."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from relaygate.config.model import Config
from relaygate.errors import ConfigError
from relaygate.keys import policy
from relaygate.state import State, StateSettings, StateUnavailable, open_state
from relaygate.state.records import utc_day

if TYPE_CHECKING:
    from relaygate.gateway import Gateway

log = logging.getLogger("relaygate.gateway")
FLUSH_EVERY_S = 1.0
ADOPT_EVERY_S = 0.5
PRUNE_EVERY_S = 3600.0
STARTUP_READ_S = 5.0  # each start-up read from the state store, and each shutdown write


def state_settings(config: Config, persist: bool = True) -> StateSettings:
    """Where state lives, from the config's DATABASE_URL, REDIS_URL and cache bounds."""
    return StateSettings(
        database_url=config.database_url if persist else "memory://",
        redis_url=config.redis_url,
        cache_max_entries=config.cache.max_entries,
        cache_max_bytes=config.cache.max_bytes,
    )


def open_gateway_state(config: Config, persist: bool) -> State:
    """The state the config names; a URL or a database that cannot be used is a ConfigError
    (one line at start-up), never a traceback."""
    try:
        return open_state(state_settings(config, persist), policy.apply)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    except (StateUnavailable, OSError) as exc:
        reason = str(exc) if isinstance(exc, StateUnavailable) else type(exc).__name__
        raise ConfigError(f"DATABASE_URL: the database cannot be opened ({reason})") from None


class Lifecycle:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.started = False
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        if self.started:
            return
        self.started = True
        gw = self.gw
        steps = [gw.keysync.restore(), gw.clients.reload()]
        if gw.persist:
            steps.append(self._seed_spend())
        for step in steps:
            try:
                await asyncio.wait_for(step, STARTUP_READ_S)
            except (StateUnavailable, TimeoutError) as exc:
                log.warning("start-up: the state store did not answer (%s)", type(exc).__name__)
        self._tasks.append(asyncio.create_task(self._background()))
        if gw.config.keys_file:
            self._tasks.append(asyncio.create_task(gw.clients.watch_keys_file()))
        if gw.discovery.every_s > 0:
            self._tasks.append(asyncio.create_task(gw.discovery.run()))
        if gw.state.shared is not None:
            self._tasks.append(asyncio.create_task(gw.keysync.run()))
        else:
            self._tasks.append(asyncio.create_task(self._adopt()))
        if gw.persist:
            self._tasks.append(asyncio.create_task(gw.accounting.ledger.run()))
            self._tasks.extend(gw.accounting.reports.start(gw))

    async def _seed_spend(self) -> None:
        state = self.gw.state
        month = utc_day(time.time())[:7]
        spend = await state.ledger.month_spend(month)
        await state.admissions.seed_spend(month, spend)

    async def _background(self) -> None:
        gw = self.gw
        last_prune = 0.0
        while True:
            await asyncio.sleep(FLUSH_EVERY_S)
            try:
                await gw.keysync.flush()
                await gw.clients.reload()
                if gw.persist and time.time() - last_prune > PRUNE_EVERY_S:
                    last_prune = time.time()
                    cutoff = last_prune - gw.config.ledger.retention_days * 86400
                    await gw.state.ledger.prune(cutoff)
            except Exception as exc:  # noqa: BLE001 (a background loop logs and goes on)
                log.warning("background flush failed: %s", type(exc).__name__)

    async def _adopt(self) -> None:
        """Key states another process wrote (`relaygate upstream check`), taken over within
        a second."""
        while True:
            await asyncio.sleep(ADOPT_EVERY_S)
            try:
                await self.gw.keysync.adopt()
            except Exception as exc:  # noqa: BLE001 (a background loop logs and goes on)
                log.debug("key states not re-read: %s", type(exc).__name__)

    async def stop(self) -> None:
        """The background work stopped, what is pending written (bounded), the state closed."""
        gw = self.gw
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        try:  # a database that fails now costs a log line, never a traceback or a hang
            await asyncio.wait_for(gw.keysync.sync(), STARTUP_READ_S)
            await asyncio.wait_for(gw.keysync.flush(), STARTUP_READ_S)
        except (StateUnavailable, OSError, TimeoutError) as exc:
            log.error("shutdown: key states could not be saved (%s)", type(exc).__name__)
        ledger = gw.accounting.ledger
        await ledger.close()
        if self.started:
            log.info("stopped: %d ledger rows written, %d not", ledger.written, ledger.depth)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(gw.state.admissions.flush(), STARTUP_READ_S)
        await gw.state.aclose()
        self.started = False
