"""The in-memory backends of one process: upstream key states (the transition rules applied per
event), issued clients, the response cache (LRU, bounded by entries and bytes, with a ttl per
entry) and once-only claims. Nothing here outlives the process; records handed out are copies,
so a caller changing one never changes what is stored."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import replace

from relaygate.state.records import ClientChanges, ClientRecord, KeyEvent, KeyRecord, Rules

Transition = Callable[[KeyRecord, KeyEvent, float, Rules], KeyRecord]


class MemoryKeyStates:
    """Key records by key id and provider pauses. `apply` runs `transition` (keys/policy.apply)
    on each event in turn, with the time from `clock`."""

    def __init__(self, transition: Transition, clock: Callable[[], float] = time.time) -> None:
        self.transition = transition
        self.clock = clock
        self._records: dict[str, KeyRecord] = {}
        self._pauses: dict[str, float] = {}

    async def load(self) -> list[KeyRecord]:
        return [replace(r) for r in self._records.values()]

    async def save(self, records: Sequence[KeyRecord]) -> None:
        for record in records:
            self._records[record.key_id] = replace(record)

    async def apply(self, events: Sequence[KeyEvent], rules: Rules) -> list[KeyRecord]:
        touched: dict[str, KeyRecord] = {}
        for event in events:
            record = self._records.get(event.key_id)
            if record is None:
                record = KeyRecord(event.key_id, event.provider)
            record = self.transition(record, event, self.clock(), rules)
            self._records[event.key_id] = record
            touched[event.key_id] = record
        return [replace(r) for r in touched.values()]

    async def pause(self, provider: str, until: float) -> None:
        if until > self._pauses.get(provider, float("-inf")):
            self._pauses[provider] = until

    async def pauses(self) -> dict[str, float]:
        return dict(self._pauses)

    async def aclose(self) -> None:
        return None


class MemoryClients:
    """Issued clients by id, with their key hashes unique."""

    def __init__(self) -> None:
        self._clients: dict[str, ClientRecord] = {}
        self._hashes: set[str] = set()

    async def insert(self, client: ClientRecord) -> None:
        if client.id in self._clients:
            raise ValueError("a client with this id exists already")
        if client.key_hash in self._hashes:
            raise ValueError("a client with this key exists already")
        self._clients[client.id] = client
        self._hashes.add(client.key_hash)

    async def get(self, client_id: str) -> ClientRecord | None:
        return self._clients.get(client_id)  # frozen: no copy needed

    async def update(self, client_id: str, changes: ClientChanges) -> ClientRecord | None:
        client = self._clients.get(client_id)
        if client is None or client.revoked_at is not None:
            return None
        named = changes.fields & ClientChanges.ALLOWED
        values = {name: getattr(changes, name) for name in named}
        if "models" in values and values["models"] is not None:
            values["models"] = tuple(values["models"])
        client = replace(client, **values)
        self._clients[client_id] = client
        return client

    async def revoke(self, client_id: str) -> bool:
        client = self._clients.get(client_id)
        if client is None or client.revoked_at is not None:
            return False
        self._clients[client_id] = replace(client, revoked_at=time.time())
        return True

    async def list(self, *, include_revoked: bool = True) -> list[ClientRecord]:
        found = [c for c in self._clients.values() if include_revoked or c.revoked_at is None]
        found.sort(key=lambda c: c.created_at)  # stable: equal times keep the insertion order
        return found

    async def aclose(self) -> None:
        return None


class MemoryCache:
    """Responses by key, least recently used first out, while there are more than `max_entries`
    entries or more than `max_bytes` bytes of values. A value larger than `max_bytes` alone, or
    with a ttl that is not positive, is not kept."""

    local = True

    def __init__(
        self, max_entries: int, max_bytes: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.clock = clock
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= self.clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry[0]

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        if key in self._entries:
            self._drop(key)
        size = len(value)
        if size > self.max_bytes or self.max_entries < 1 or not ttl_s > 0:
            return
        self._entries[key] = (value, self.clock() + ttl_s)
        self.bytes += size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            _, (old, _) = self._entries.popitem(last=False)
            self.bytes -= len(old)

    def _drop(self, key: str) -> None:
        value, _ = self._entries.pop(key)
        self.bytes -= len(value)

    async def aclose(self) -> None:
        self._entries.clear()
        self.bytes = 0


class MemoryClaims:
    """Claimed names and when each claim ends; the first caller of a name wins until then."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._until: dict[str, float] = {}

    async def claim(self, name: str, ttl_s: float) -> bool:
        now = self.clock()
        if self._until.get(name, float("-inf")) > now:
            return False
        if len(self._until) > 1000:  # forget ended claims now and then
            self._until = {n: t for n, t in self._until.items() if t > now}
        self._until[name] = now + ttl_s
        return True

    async def claimed(self, name: str) -> bool:
        return self._until.get(name, float("-inf")) > self.clock()

    async def aclose(self) -> None:
        return None
