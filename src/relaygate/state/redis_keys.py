"""Upstream key states in Redis, the live copy every replica reads and writes: `apply` runs the
transition rules in one script per call (state/lua/keys_apply.lua, which mirrors keys/policy.py
line by line on Redis' clock), so events from many replicas never lose one another; `save`
stores whole records (last writer wins); provider pauses only ever extend (state/lua/pause.lua).

Keys, under the prefix: `key:<key id>` (a hash per record: its fields, `until` and `reason`
absent when None), `keys` (the set of key ids) and `pauses` (provider -> until). Key records and
pauses do not expire: there are as many as there are configured keys and providers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import astuple
from typing import Any

from relaygate.state.records import KeyEvent, KeyRecord, KeyStateName, Rules
from relaygate.state.redis_db import RedisDB

_STATES: dict[str, KeyStateName] = {
    "ready": "ready",
    "cooling": "cooling",
    "exhausted": "exhausted",
    "invalid": "invalid",
}
_INTS = ("fail_streak", "requests_today", "tokens_today", "requests_total", "tokens_total")


def _number(value: float | None) -> str:
    """A number for the script: '' for none, and for one that is not finite (the rules treat
    both alike: the default cooldown)."""
    return "" if value is None or not math.isfinite(value) else repr(float(value))


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _record(row: Sequence[Any]) -> KeyRecord:
    """A record from its key id followed by its hash's fields and values."""
    fields = {_text(row[i]): _text(row[i + 1]) for i in range(1, len(row) - 1, 2)}
    until = fields.get("until")
    return KeyRecord(
        key_id=_text(row[0]),
        provider=fields.get("provider", ""),
        state=_STATES.get(fields.get("state", "ready"), "ready"),
        until=float(until) if until is not None else None,
        reason=fields.get("reason"),
        fail_streak=int(fields.get("fail_streak", "0")),
        next_cooldown_s=float(fields.get("next_cooldown_s", "0")),
        day=fields.get("day", ""),
        requests_today=int(fields.get("requests_today", "0")),
        tokens_today=int(fields.get("tokens_today", "0")),
        requests_total=int(fields.get("requests_total", "0")),
        tokens_total=int(fields.get("tokens_total", "0")),
    )


def _mapping(record: KeyRecord) -> dict[str, str]:
    out = {
        "provider": record.provider,
        "state": record.state,
        "next_cooldown_s": repr(float(record.next_cooldown_s)),
        "day": record.day,
    }
    out.update((name, str(int(getattr(record, name)))) for name in _INTS)
    if record.until is not None:
        out["until"] = repr(float(record.until))
    if record.reason is not None:
        out["reason"] = record.reason
    return out


class RedisKeyStates:
    """KeyStates in Redis (see the module)."""

    def __init__(self, db: RedisDB) -> None:
        self._db = db
        self._closed = False
        db.attach()

    async def load(self) -> list[KeyRecord]:
        db = self._db
        rows = await db.evalsha("keys_load.lua", [db.key("keys")], [db.key("key", "")])
        return sorted((_record(row) for row in rows), key=lambda r: r.key_id)

    async def save(self, records: Sequence[KeyRecord]) -> None:
        if not records:
            return
        db = self._db
        latest = {r.key_id: r for r in records}  # the last of a key wins, as one after another

        async def write(client: Any) -> None:
            async with client.pipeline(transaction=True) as pipe:  # its connection goes back
                for key_id, record in latest.items():
                    name = db.key("key", key_id)
                    pipe.delete(name)
                    pipe.hset(name, mapping=_mapping(record))
                pipe.sadd(db.key("keys"), *latest)
                await pipe.execute()

        await db.run(write)

    async def apply(self, events: Sequence[KeyEvent], rules: Rules) -> list[KeyRecord]:
        if not events:
            return []
        db = self._db
        order: dict[str, int] = {}
        for event in events:
            order.setdefault(event.key_id, len(order) + 1)
        keys = [db.key("keys"), *(db.key("key", key_id) for key_id in order)]
        args: list[Any] = [repr(float(x)) for x in astuple(rules)]
        args += order
        for e in events:
            args += [order[e.key_id], e.provider, e.kind, int(e.tokens), int(e.status)]
            args += [_number(e.retry_after_s), _number(e.reset_at), e.message[:120], int(e.count)]
        rows = await db.evalsha_hot("keys_apply.lua", keys, args, "utc.lua")
        return [_record(row) for row in rows]

    async def pause(self, provider: str, until: float) -> None:
        await self._db.evalsha("pause.lua", [self._db.key("pauses")], [provider, repr(until)])

    async def pauses(self) -> dict[str, float]:
        name = self._db.key("pauses")
        raw = await self._db.run(lambda c: c.hgetall(name))
        return {_text(provider): float(until) for provider, until in raw.items()}

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._db.detach()
