"""The request path's pipelined Redis connection (state/redis_wire.py), on private redis-servers:
commands of one loop turn share one write and get their own replies in order; AUTH and the
database number from the URL; NOSCRIPT answered by loading the script; a server that goes away
fails every waiting call at once and the next call connects again; no password in any error."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator

import pytest

from relaygate.state.records import StateUnavailable
from relaygate.state.redis_db import RedisDB
from relaygate.state.redis_wire import PipelinedConnection, ReplyErrorFromServer
from tests.integration._redis import PrivateRedis

CANARY = "s3cret-canary-wire"


@pytest.fixture
def server() -> Iterator[PrivateRedis]:
    s = PrivateRedis(None, "--requirepass", CANARY).start()
    yield s
    s.stop()


def url(server: PrivateRedis, db: int = 3) -> str:
    return f"redis://:{CANARY}@127.0.0.1:{server.port}/{db}"


async def test_one_write_per_loop_turn_and_replies_in_order(server: PrivateRedis) -> None:
    wire = PipelinedConnection(url(server))
    try:
        await wire.call("SET", "k", "v")  # connected (AUTH, SELECT 3) before counting
        proto = wire._proto
        assert proto is not None and proto.transport is not None
        writes: list[bytes] = []
        real = proto.transport.write
        proto.transport.write = lambda data: (writes.append(data), real(data))[1]  # type: ignore[method-assign,assignment,func-returns-value]
        replies = await asyncio.gather(*(wire.call("INCRBY", "n", i) for i in range(1, 201)))
        assert replies == [i * (i + 1) // 2 for i in range(1, 201)]  # each its own reply
        assert len(writes) == 1, "200 commands of one loop turn go out in one write"
        assert await wire.call("GET", "k") == b"v"
    finally:
        wire.close()
    other = PipelinedConnection(url(server, db=0))  # SELECT came from the URL: db 0 has no k
    try:
        assert await other.call("GET", "k") is None
    finally:
        other.close()


async def test_noscript_loads_the_script(server: PrivateRedis) -> None:
    wire = PipelinedConnection(url(server))
    script = b"return tonumber(ARGV[1]) + 1"
    sha = hashlib.sha1(script).hexdigest()  # noqa: S324 (Redis names scripts by SHA-1)
    try:
        assert await wire.evalsha(sha, script, [], [41]) == 42
        assert await wire.call("EVALSHA", sha, 0, 1) == 2  # loaded now
        with pytest.raises(ReplyErrorFromServer):
            await wire.call("NOSUCHCOMMAND")
        assert await wire.call("PING") == b"PONG"  # an error reply leaves the order intact
    finally:
        wire.close()


async def test_a_lost_server_fails_waiting_calls_and_the_next_call_reconnects(
    server: PrivateRedis,
) -> None:
    db = RedisDB(url(server), prefix="wire:", timeout_s=0.5)
    try:
        assert await db.evalsha_hot("replicas.lua", [db.key("replicas")], ["me", 6, 60]) == 1
        server.stop()
        for _ in range(3):
            with pytest.raises(StateUnavailable) as caught:
                await db.evalsha_hot("replicas.lua", [db.key("replicas")], ["me", 6, 60])
            assert CANARY not in str(caught.value) and CANARY not in repr(caught.value)
        again = PrivateRedis(server.port, "--requirepass", CANARY).start()  # back, same port
        try:  # an empty server: the script is loaded again (NOSCRIPT) on the new connection
            assert await db.evalsha_hot("replicas.lua", [db.key("replicas")], ["me", 6, 60]) == 1
        finally:
            await db.aclose()
            again.stop()
    finally:
        await db.aclose()
