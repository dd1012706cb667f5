"""The Redis connection of the hot state: one `redis.asyncio` client per backend over a bounded
blocking pool, built without any I/O (connections open on first use, on the running loop); the
Lua scripts of `state/lua` (EVALSHA, loaded again on NOSCRIPT); the replica heartbeat; and
`open_redis`, which puts the parts together (admissions behind their failover, key states, the
cache, claims).

Every call is bounded: timeout_s to connect, per socket read or write, to wait for a pooled
connection, and for the whole call (asyncio.timeout), with no retries. Every driver error and
every timeout leaves `run` as StateUnavailable naming only the error class (never the URL or its
password). The parts share the client: it closes when the last of them closes.

Keys live under the prefix: admissions (`req:`, `tok:`, `acct:`, `res:`, `seq`), key states
(`keys`, `key:`, `pauses`), the cache (`cache:`), claims (`claim:`) and `replicas`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError
from redis.retry import Retry

from relaygate.state.protocols import Admissions
from relaygate.state.records import StateUnavailable
from relaygate.state.redis_wire import PipelinedConnection, ReplyErrorFromServer

if TYPE_CHECKING:
    from relaygate.state.failover import FailoverAdmissions
    from relaygate.state.redis_keys import RedisKeyStates
    from relaygate.state.redis_misc import RedisCache, RedisClaims

T = TypeVar("T")
log = logging.getLogger("relaygate.state")

MAX_CONNECTIONS = 64
HEALTH_CHECK_S = 30
BEAT_S = 2.0  # the heartbeat's period
STALE_S = 6.0  # a replica not seen for this long is gone
REPLICAS_TTL_S = 60
_ERRORS = (RedisError, OSError, TimeoutError, ReplyErrorFromServer)  # TimeoutError: both kinds


def unavailable(exc: BaseException) -> StateUnavailable:
    """What a caller learns of a driver error: the backend and the error's class, no more."""
    return StateUnavailable(f"redis: {type(exc).__name__}")


async def stop(task: asyncio.Task[None] | None, wait_s: float) -> None:
    """Cancel a background task and wait for it, a bounded while: a driver may turn the cancel
    into an error the task handles, so its loop also checks a flag of its own."""
    if task is not None:
        task.cancel()
        await asyncio.wait({task}, timeout=wait_s)


def lua(*names: str) -> str:
    """The text of the scripts `names` (a prelude first), from the package data."""
    folder = resources.files("relaygate.state").joinpath("lua")  # a data folder, no package
    return "\n".join(folder.joinpath(name).read_text(encoding="utf-8") for name in names)


class RedisDB:
    """The client, its scripts, the heartbeat and the number of live replicas."""

    def __init__(self, url: str, *, prefix: str, timeout_s: float) -> None:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("REDIS_URL must start with redis://, rediss:// or unix://")
        self.prefix = prefix
        self.timeout_s = timeout_s
        try:
            pool = BlockingConnectionPool.from_url(
                url,
                max_connections=MAX_CONNECTIONS,
                timeout=timeout_s,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                health_check_interval=HEALTH_CHECK_S,
                retry=Retry(NoBackoff(), 0),
            )
        except (ValueError, TypeError):
            raise ValueError("REDIS_URL is not a valid Redis URL") from None
        self.client: Redis = Redis.from_pool(pool)
        # the request path's script on one pipelined connection (redis_wire); redis-py for the
        # rest, for TLS and sockets, and for everything with RELAYGATE_REDIS_WIRE=0
        wire = url.startswith("redis://") and os.environ.get("RELAYGATE_REDIS_WIRE") != "0"
        self.wire = PipelinedConnection(url, timeout_s) if wire else None
        self.replica_id = secrets.token_hex(8)
        self.replicas = 1  # the last count the heartbeat saw (this replica at least)
        self._scripts: dict[str, AsyncScript] = {}
        self._hot: dict[str, tuple[str, bytes]] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._started = False
        self._stopping = False
        self._users = 0
        self._closed = False

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def script(self, name: str, *prelude: str) -> AsyncScript:
        """The script `name` (with `prelude` files before it), registered once."""
        found = self._scripts.get(name)
        if found is None:
            found = self._scripts[name] = self.client.register_script(lua(*prelude, name))
        return found

    async def run(self, call: Callable[[Redis], Awaitable[T]]) -> T:
        """`call(client)`, bounded by timeout_s; any driver error or timeout is StateUnavailable."""
        if self._closed:
            raise StateUnavailable("redis: closed")
        if not self._started:
            self._start()
        # The driver may turn a cancellation of its caller into an error, or finish the command
        # and drop it: either way the caller's cancellation is what it gets.
        task = asyncio.current_task()
        cancels = task.cancelling() if task is not None else 0
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await call(self.client)
        except _ERRORS as exc:
            if task is not None and task.cancelling() > cancels:
                raise asyncio.CancelledError from None
            raise unavailable(exc) from None
        if task is not None and task.cancelling() > cancels:
            raise asyncio.CancelledError
        return result

    def _hot_script(self, name: str, prelude: tuple[str, ...]) -> tuple[str, bytes]:
        """(SHA-1, text) of a script for the pipelined connection, encoded once."""
        script = self.script(name, *prelude)
        text = script.script if isinstance(script.script, bytes) else str(script.script).encode()
        found = self._hot[name] = (script.sha, text)
        return found

    def _start(self) -> None:
        self._started = True
        self._heartbeat = asyncio.get_running_loop().create_task(self._beat_forever())

    async def evalsha(self, name: str, keys: list[str], args: list[Any], *prelude: str) -> Any:
        """One script call: one round trip (two more the first time a server meets it)."""
        script = self.script(name, *prelude)
        return await self.run(lambda _: script(keys=keys, args=args))

    async def evalsha_hot(self, name: str, keys: list[str], args: list[Any], *prelude: str) -> Any:
        """`evalsha` for the request path: on the pipelined connection when there is one."""
        wire = self.wire
        if wire is None:
            return await self.evalsha(name, keys, args, *prelude)
        if self._closed:
            raise StateUnavailable("redis: closed")
        if not self._started:
            self._start()
        sha, text = self._hot.get(name) or self._hot_script(name, prelude)
        try:  # bounded by the connection's own timer (no asyncio.timeout per call)
            return await wire.evalsha(sha, text, keys, args)
        except (OSError, TimeoutError, ReplyErrorFromServer) as exc:
            raise unavailable(exc) from None

    async def evalsha_batch(
        self, name: str, calls: list[tuple[list[str], list[Any]]]
    ) -> list[Any] | None:
        """Several calls of one script in one write on the pipelined connection (each result, or
        its error reply); None when there is no such connection (the caller pipelines)."""
        wire = self.wire
        if wire is None:
            return None
        sha, text = self._hot.get(name) or self._hot_script(name, ())

        async def send(_: Redis) -> list[Any]:
            sent = [wire.evalsha(sha, text, keys, args) for keys, args in calls]
            return await asyncio.gather(*sent, return_exceptions=True)

        results = await self.run(send)
        for result in results:  # a lost connection fails them all: Redis is away
            if isinstance(result, BaseException) and not isinstance(result, ReplyErrorFromServer):
                raise unavailable(result)
        return results

    async def beat(self) -> int:
        """One heartbeat: this replica seen now; the number of live replicas (kept)."""
        args = [self.replica_id, STALE_S, REPLICAS_TTL_S]
        count = int(await self.evalsha("replicas.lua", [self.key("replicas")], args))
        self.replicas = max(1, count)
        return self.replicas

    async def _beat_forever(self) -> None:
        while not self._stopping:
            with contextlib.suppress(StateUnavailable):  # the last count stands meanwhile
                await self.beat()
            await asyncio.sleep(BEAT_S)

    # --- the parts share the client --------------------------------------------------------
    def attach(self) -> None:
        self._users += 1

    async def detach(self) -> None:
        """One part closed; the last one closes the client (idempotent past zero)."""
        self._users -= 1
        if self._users <= 0:
            await self.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._stopping = True
        task, self._heartbeat = self._heartbeat, None
        if task is not None:
            await stop(task, self.timeout_s)
            with contextlib.suppress(StateUnavailable):  # gone at once for the others
                await self.run(lambda c: c.zrem(self.key("replicas"), self.replica_id))
        self._closed = True
        if self.wire is not None:
            self.wire.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.aclose(), self.timeout_s)


@dataclass(slots=True)
class RedisState:
    """The hot state in Redis: what `open_state` takes (admissions, keys, cache, claims)."""

    db: RedisDB
    admissions: FailoverAdmissions
    keys: RedisKeyStates
    cache: RedisCache
    claims: RedisClaims

    async def aclose(self) -> None:
        for part in (self.admissions, self.keys, self.cache, self.claims):
            with contextlib.suppress(Exception):
                await part.aclose()
        await self.db.aclose()


def open_redis(url: str, *, prefix: str, timeout_s: float, fallback: Admissions) -> RedisState:
    """The Redis backends over one client; no I/O here (connections open on first use). While
    Redis is away, admissions are answered by `fallback` with this replica's share of each
    limit. A URL that is not a Redis URL raises ValueError (which never quotes the URL)."""
    from relaygate.state.failover import FailoverAdmissions
    from relaygate.state.redis_admissions import RedisAdmissions
    from relaygate.state.redis_keys import RedisKeyStates
    from relaygate.state.redis_misc import RedisCache, RedisClaims

    db = RedisDB(url, prefix=prefix, timeout_s=timeout_s)
    primary = RedisAdmissions(db)
    return RedisState(
        db=db,
        admissions=FailoverAdmissions(primary, fallback, lambda: db.replicas),
        keys=RedisKeyStates(db),
        cache=RedisCache(db),
        claims=RedisClaims(db),
    )
