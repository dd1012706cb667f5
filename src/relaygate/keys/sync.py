"""Key states between the pools and the state seam. In one process the pools are the truth and
their changed keys are saved as snapshots (SQLite or Postgres) every second. With a shared store
(Redis) every replica sends what happened to its keys as events every SYNC_S, the store applies
the same transition rules atomically, and the pools take the shared records back: a key parked by
one replica is skipped by the others within SYNC_S * 2, and least-used counts are shared."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from relaygate.keys.pool import KeyPool
from relaygate.state import StateUnavailable
from relaygate.state.protocols import KeyStates
from relaygate.state.records import KeyEvent, KeyRecord

log = logging.getLogger("relaygate.keys")
SYNC_S = 0.25
SNAPSHOT_EVERY = 20  # syncs between two snapshots of the shared records into the durable store


class KeySync:
    def __init__(
        self, pools: Mapping[str, KeyPool], durable: KeyStates, shared: KeyStates | None
    ) -> None:
        self.pools = pools
        self.durable = durable
        self.shared = shared
        self._down = False
        # without a shared store: each key's state as this process last wrote or read it in the
        # durable store, so a state another process wrote there (`relaygate upstream check`) is
        # told apart from this process's own and taken over
        self._seen: dict[str, tuple[Any, ...]] = {}
        if shared is not None:
            for pool in pools.values():
                pool.events = []

    async def restore(self) -> None:
        """At start: the durable snapshots; with a shared store, the shared records win, and keys
        the shared store has never seen (an emptied Redis) are seeded from the snapshots."""
        durable = await self.durable.load()
        records = durable
        if self.shared is not None:
            shared = await self.shared.load()
            seen = {r.key_id for r in shared}
            mine = {k.key_id for pool in self.pools.values() for k in pool.keys}
            missing = [r for r in durable if r.key_id not in seen and r.key_id in mine]
            if missing:
                await self.shared.save(missing)
            records = shared + missing
        for pool in self.pools.values():
            pool.restore(records)
        self._seen = {r.key_id: _state_of(r) for r in durable}

    async def adopt(self) -> None:
        """Without a shared store: key states written to the durable store by another process
        since this one last saw them are taken over (unless this process changed the key since)."""
        if self.shared is not None:
            return
        records = await self.durable.load()
        for pool in self.pools.values():
            for rec in records:
                key = pool.find(rec.key_id) if rec.provider == pool.provider else None
                if key is None:
                    continue
                base = self._seen.get(rec.key_id, _FRESH)
                if _state_of(rec) == base or _state_of(key.record()) != base:
                    continue  # nobody else changed it, or this process did (its write wins)
                key.state, key.until, key.reason = rec.state, rec.until, rec.reason
                key.fail_streak, key.next_cooldown_s = rec.fail_streak, rec.next_cooldown_s
                log.info("key %s is %s (set by another process)", key.key_id, rec.state)
        self._seen.update({r.key_id: _state_of(r) for r in records})

    async def flush(self) -> None:
        """Changed keys as snapshots into the durable store (kept for the next flush when the
        write fails)."""
        if self.shared is None:  # what another process wrote first, else this write hides it
            await self.adopt()
        taken = [(pool, pool.take_dirty()) for pool in self.pools.values()]
        rows = [row for _, part in taken for row in part]
        if not rows:
            return
        try:
            await self.durable.save(rows)
        except BaseException:
            for pool, part in taken:
                pool.mark_dirty(row.key_id for row in part)
            raise
        self._seen.update({r.key_id: _state_of(r) for r in rows})

    async def sync(self) -> None:
        """One exchange with the shared store: events out, shared records in."""
        shared = self.shared
        if shared is None:
            return
        events: list[KeyEvent] = []
        pauses_out: list[tuple[str, float]] = []
        for name, pool in self.pools.items():
            taken, pause = pool.take_events()
            events.extend(taken)
            if pause is not None:
                pauses_out.append((name, pause))
        try:
            if events:
                rules = next(iter(self.pools.values())).rules
                await shared.apply(coalesce(events), rules)
            for name, until in pauses_out:
                await shared.pause(name, until)
            records = await shared.load()
            pauses = await shared.pauses()
        except StateUnavailable as exc:
            if not self._down:
                self._down = True
                log.warning("shared key states unavailable (%s): each replica keeps its own", exc)
            return  # the events are lost to the shared counts; this replica's own state stands
        if self._down:
            self._down = False
            log.warning("shared key states available again")
        for pool in self.pools.values():
            pool.merge(records, pauses)

    async def run(self) -> None:
        n = 0
        while True:
            await asyncio.sleep(SYNC_S)
            await self.sync()
            n += 1
            if n % SNAPSHOT_EVERY == 0 and self.shared is not None:
                with contextlib.suppress(StateUnavailable):
                    await self.durable.save(self.snapshot())

    def snapshot(self) -> list[KeyRecord]:
        return [k.record() for pool in self.pools.values() for k in pool.keys]


_FRESH = ("ready", None, None)


def _state_of(record: KeyRecord) -> tuple[Any, ...]:
    return record.state, record.until, record.reason


def coalesce(events: list[KeyEvent]) -> list[KeyEvent]:
    """The same outcome in fewer events: per key, a run of `used` and `success` events (they
    commute: one counts a request, the other its tokens and clears the failure streak) becomes
    one `used` with their count and one `success` with their tokens; any other event of that key
    ends its run and keeps its place after it. Keys are independent of each other."""
    out: list[KeyEvent] = []
    runs: dict[str, list[Any]] = {}  # key id: [first used, uses, first success, tokens]

    def close(key_id: str) -> None:
        run = runs.pop(key_id, None)
        if run is None:
            return
        if run[0] is not None:
            out.append(replace(run[0], count=run[1]))
        if run[2] is not None:
            out.append(replace(run[2], tokens=run[3]))

    for event in events:
        kind = event.kind
        if kind == "used" or kind == "success":
            run = runs.get(event.key_id)
            if run is None:
                run = runs[event.key_id] = [None, 0, None, 0]
            if kind == "used":
                run[0] = run[0] or event
                run[1] += event.count
            else:
                run[2] = run[2] or event
                run[3] += event.tokens
        else:
            close(event.key_id)
            out.append(event)
    for key_id in list(runs):
        close(key_id)
    return out
