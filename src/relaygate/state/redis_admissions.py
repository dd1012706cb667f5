"""Admissions in Redis, shared by every replica: `admit` is one round trip (state/lua/admit.lua,
on Redis' clock) that checks the request window, the token window and the month's budget and
either refuses taking nothing or takes all three at once, exactly as MemoryAdmissions does in one
process. Money is in whole nano-dollars inside Redis, so sums never drift.

Owns the settlement queue: `settle` and `release` only queue (they are off the request path); a
task on the running loop sends the queue every FLUSH_EVERY_S, in one pipeline of batch scripts
(state/lua/settle.lua). The queue is bounded (the oldest go first, with one warning), so a dead
Redis never grows memory; what failed to go is sent again later, and settling a reservation
twice counts its cost once. A reservation never settled (a crashed replica) gives its amount back
after RESERVATION_TTL_S by itself; windows and accounts expire, so Redis never grows forever.

Keys, under the prefix: `req:<client>` (zset of admitted requests, 60 s), `tok:<client>` (hash of
one-second token buckets), `acct:<month>:<client>` (hash: spent, reserved, r<ticket> per open
reservation), `res:<month>:<client>` (zset of reservations by expiry) and `seq` (tickets)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Mapping
from typing import Any, NamedTuple, get_args

from redis.asyncio import Redis

from relaygate.state.memory_admissions import utc_month
from relaygate.state.records import Admission, AdmitRequest, RefusedBy, StateUnavailable
from relaygate.state.redis_db import RedisDB, stop

log = logging.getLogger("relaygate.state")

NANO = 1_000_000_000  # nano-dollars per dollar
WINDOW_TTL_S = 120
ACCOUNT_TTL_S = 40 * 86400
RESERVATION_TTL_S = 20 * 60  # an admission never settled holds its budget this long at most
TOMBSTONE_TTL_S = 40 * 60  # then a settlement arriving late still counts its cost
MAX_QUEUE = 100_000
FLUSH_EVERY_S = 0.05
RETRY_S = 1.0  # after a failed send
MAX_BATCH = 1000  # operations per pipeline
CHUNK = 250  # operations per script call
SEED_CHUNK = 500
TICKET = "r:"  # how a Redis ticket starts (the failover tells the backends apart by it)
_REFUSED: dict[bytes, RefusedBy] = {name.encode(): name for name in get_args(RefusedBy)}


class _Op(NamedTuple):
    """A queued settlement: 's' settle, 'r' release, 'p' spend only."""

    kind: str
    number: str
    took: str  # 'q' request slot, 't' tokens, 'b' reservation
    second: str
    estimate: int
    tokens: int
    cost: int  # nano-dollars
    month: str
    client: str


def nanos(usd: float) -> int:
    """Whole nano-dollars of an amount (not finite: nothing)."""
    return round(usd * NANO) if math.isfinite(usd) else 0


def _limit(value: int | None) -> str:
    return "" if value is None else str(value)


def _ticket_op(kind: str, ticket: str, tokens: int, cost_usd: float) -> _Op | None:
    if not ticket.startswith(TICKET):
        return None
    parts = ticket.split(":", 6)
    if len(parts) != 7:
        return None
    _, number, took, second, estimate, month, client = parts
    if not took or (kind == "s" and took == "q"):  # nothing to give back or settle
        return None
    cost = max(0, nanos(cost_usd))
    return _Op(kind, number, took, second, int(estimate), tokens, cost, month, client)


class RedisAdmissions:
    """Admissions in Redis (see the module). Tickets start with TICKET."""

    def __init__(self, db: RedisDB) -> None:
        self._db = db
        self._queue: deque[_Op] = deque()
        self._task: asyncio.Task[None] | None = None
        self._event: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None
        self._sending = 0
        self._attempts = 0  # sends tried, and how the last one failed
        self._failed: str | None = None
        self._warned = False
        self._closed = False
        self.dropped = 0  # settlements dropped because the queue was full
        # the arguments every admit ends with, encoded once
        tail = (db.prefix, RESERVATION_TTL_S, TOMBSTONE_TTL_S, WINDOW_TTL_S, ACCOUNT_TTL_S)
        self._tail: list[Any] = [str(value).encode() for value in tail]
        db.attach()

    async def admit(self, request: AdmitRequest) -> Admission:
        rpm, tpm, budget = request.rpm, request.tpm, request.budget_usd
        if budget is not None and not math.isfinite(budget):
            budget = None  # no finite budget: nothing to hold
        if rpm is None and tpm is None and budget is None:
            return Admission(True, month=utc_month(time.time()), tokens=request.tokens)
        db, client = self._db, request.client_id
        keys = [db.key("req", client), db.key("tok", client), db.key("seq")]
        args: list[Any] = [client, _limit(rpm), _limit(tpm), request.tokens]
        args += ["" if budget is None else nanos(budget), max(0, nanos(request.cost_usd))]
        args += self._tail
        out = await db.evalsha_hot("admit.lua", keys, args, "utc.lua")
        allowed, refused, left_requests, reset_us, left_tokens, retry, left, month, n, second = out
        adm = Admission(
            bool(allowed),
            refused=_REFUSED.get(refused),
            rpm=rpm,
            remaining_requests=int(left_requests),
            reset_requests_s=int(reset_us) / 1_000_000,
            tpm=tpm,
            remaining_tokens=int(left_tokens),
            retry_after_s=float(retry),
            budget_usd=request.budget_usd,
            budget_left_usd=int(left) / NANO,
            month=month.decode(),
            tokens=request.tokens,
        )
        if adm.allowed and n:
            took = "q" * (rpm is not None) + "t" * (tpm is not None) + "b" * (budget is not None)
            adm.ticket = f"{TICKET}{n}:{took}:{second}:{request.tokens}:{adm.month}:{client}"
            if budget is not None:
                adm.cost_usd = request.cost_usd
        return adm

    def settle(self, admission: Admission, tokens: int, cost_usd: float) -> None:
        self._give_back("s", admission, tokens, cost_usd)

    def release(self, admission: Admission) -> None:
        self._give_back("r", admission, 0, 0.0)

    def _give_back(self, kind: str, admission: Admission, tokens: int, cost_usd: float) -> None:
        if not admission.settled:  # once per admission
            admission.settled = True
            op = _ticket_op(kind, admission.ticket, tokens, cost_usd)
            if op is not None:
                self._enqueue(op)

    def add_spend(self, client_id: str, month: str, cost_usd: float) -> None:
        """Spend Redis did not see (admitted by the fallback while it was away), queued."""
        cost = max(0, nanos(cost_usd))
        if cost and month:
            self._enqueue(_Op("p", "", "", "", 0, 0, cost, month, client_id))

    async def spent(self, client_id: str, month: str) -> float:
        name = self._db.key("acct", month, client_id)
        raw = await self._db.run(lambda c: c.hget(name, "spent"))
        return int(raw) / NANO if raw is not None else 0.0

    async def seed_spend(self, month: str, spend: Mapping[str, float]) -> None:
        items = list(spend.items())
        for start in range(0, len(items), SEED_CHUNK):
            part = items[start : start + SEED_CHUNK]
            keys = [self._db.key("acct", month, client) for client, _ in part]
            args = [ACCOUNT_TTL_S, *(max(0, nanos(float(amount))) for _, amount in part)]
            await self._db.evalsha("seed.lua", keys, args)

    async def ping(self) -> None:
        await self._db.run(lambda c: c.ping())

    async def flush(self) -> None:
        """Send what is queued; StateUnavailable (it stays queued) when Redis does not take it.
        A send under way is waited for, and its failure is this one's (never two waits)."""
        attempts = self._attempts
        async with self._get_lock():
            if self._attempts != attempts and self._failed is not None:
                raise StateUnavailable(self._failed)
            await self._drain_locked()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        await stop(task, self._db.timeout_s)
        with contextlib.suppress(StateUnavailable, TimeoutError):
            async with asyncio.timeout(self._db.timeout_s * 2):
                await self._drain()
        await self._db.detach()

    @property
    def queued(self) -> int:
        """Settlements not in Redis yet (queued, or being sent)."""
        return len(self._queue) + self._sending

    # --- the queue ---------------------------------------------------------------------------
    def _enqueue(self, op: _Op) -> None:
        if len(self._queue) >= MAX_QUEUE:
            self._queue.popleft()
            self._drop(1)
        self._queue.append(op)
        if self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: flush() sends it
        if self._task is None or self._task.done():
            self._event = asyncio.Event()
            self._task = loop.create_task(self._run(self._event))
        if self._event is not None:
            self._event.set()

    def _drop(self, count: int) -> None:
        self.dropped += count
        if not self._warned:
            self._warned = True
            log.warning(
                "the Redis settlement queue is full (%d): the oldest settlements are dropped",
                MAX_QUEUE,
            )

    async def _run(self, event: asyncio.Event) -> None:
        while not self._closed:
            await event.wait()
            await asyncio.sleep(FLUSH_EVERY_S)  # gather a batch
            event.clear()
            try:
                await self._drain()
            except StateUnavailable:
                await asyncio.sleep(RETRY_S)  # still queued: tried again
            except Exception as exc:  # noqa: BLE001 (a background loop logs and goes on)
                log.warning("settlements to Redis failed: %s", type(exc).__name__)
                await asyncio.sleep(RETRY_S)
            if self._queue:
                event.set()

    def _get_lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def _drain(self) -> None:
        async with self._get_lock():
            await self._drain_locked()

    async def _drain_locked(self) -> None:
        self._attempts += 1
        self._failed = None
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
            self._sending = len(batch)
            try:
                await self._send(batch)
            except BaseException as exc:
                if isinstance(exc, StateUnavailable):
                    self._failed = str(exc)
                self._queue.extendleft(reversed(batch))  # first out again
                overflow = len(self._queue) - MAX_QUEUE
                if overflow > 0:
                    for _ in range(overflow):
                        self._queue.popleft()
                    self._drop(overflow)
                raise
            finally:
                self._sending = 0

    async def _send(self, batch: list[_Op]) -> None:
        db = self._db
        script = db.script("settle.lua")
        chunks = [batch[i : i + CHUNK] for i in range(0, len(batch), CHUNK)]

        calls: list[tuple[list[str], list[Any]]] = []
        for chunk in chunks:
            keys: list[str] = []
            args: list[Any] = [ACCOUNT_TTL_S]
            for op in chunk:
                keys += [db.key("req", op.client), db.key("tok", op.client)]
                keys += [db.key(name, op.month, op.client) for name in ("acct", "res")]
                args += [op.kind, op.number, op.took, op.second]
                args += [op.estimate, op.tokens, op.cost]
            calls.append((keys, args))

        async def send(client: Redis) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:  # its connection goes back
                for keys, args in calls:
                    await script(keys=keys, args=args, client=pipe)
                return await pipe.execute(raise_on_error=False)

        results = await db.evalsha_batch("settle.lua", calls)
        if results is None:
            results = await db.run(send)
        for chunk, result in zip(chunks, results, strict=True):
            if isinstance(result, Exception):  # Redis answered: it is never going to take them
                log.warning(
                    "Redis refused %d settlements (%s): dropped", len(chunk), type(result).__name__
                )
