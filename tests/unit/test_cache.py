"""The response cache's pieces apart from HTTP: the key (canonical body, ignored fields, client
and door in it), entries (encode/decode, damaged values), a stream assembled into a whole answer
and replayed as chunks, and the service's fault handling and coalescing."""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest

from relaygate.cache.entry import Entry, StreamAssembler, replay_chunks
from relaygate.cache.key import cache_key, canonical
from relaygate.cache.service import CacheService, Unavailable
from relaygate.state.memory import MemoryCache
from relaygate.state.records import StateUnavailable
from relaygate.types import Usage

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


def test_canonical_sorts_keys_and_drops_ignored_fields():
    one = {"b": 1, "a": {"y": 2, "x": 1}, "stream": True, "user": "u", "metadata": {"k": "v"}}
    two = {"a": {"x": 1, "y": 2}, "b": 1, "stream_options": {"include_usage": True}}
    assert canonical(one) == canonical(two) == b'{"a":{"x":1,"y":2},"b":1}'


def test_key_depends_on_client_door_model_and_body():
    base = cache_key(route="/v1/chat/completions", body=BODY, client_id="c1")
    assert base == cache_key(route="/v1/chat/completions", body={**BODY, "stream": True},
                             client_id="c1")  # fmt: skip
    others = {
        cache_key(route="/v1/chat/completions", body=BODY, client_id="c2"),
        cache_key(route="/v1/messages", body=BODY, client_id="c1"),
        cache_key(route="/v1/chat/completions", body=BODY, client_id="c1", model="g"),
        cache_key(route="/v1/chat/completions", body={**BODY, "temperature": 1}, client_id="c1"),
        cache_key(route="/v1/chat/completions", body=BODY, client_id=None),
    }
    assert base not in others and len(others) == 5
    assert len(base) == 64 and "c1" not in base


def test_entry_round_trip_and_damaged_values():
    entry = Entry(b'{"x":1}', "p", "m", Usage(3, 4, 1), 0.25, native=True)
    back = Entry.decode(entry.encode())
    assert back == entry
    for bad in (b"", b"no newline", b'{"p":1}\nbody', b"\xff\n{}"):
        assert Entry.decode(bad) is None


def sse(*chunks: dict | str) -> bytes:
    out = b""
    for chunk in chunks:
        payload = chunk.encode() if isinstance(chunk, str) else orjson.dumps(chunk)
        out += b"data: " + payload + b"\n\n"
    return out


def delta(d: dict, finish: str | None = None) -> dict:
    return {"id": "c1", "created": 5, "model": "m",
            "choices": [{"index": 0, "delta": d, "finish_reason": finish}]}  # fmt: skip


FIRST_CALL = {"index": 0, "id": "t1", "function": {"name": "f", "arguments": '{"a"'}}


def test_a_stream_assembles_into_a_completion_and_replays_the_same():
    stream = sse(
        delta({"role": "assistant", "content": ""}),
        delta({"content": "Hel"}),
        delta({"content": "lo"}),
        delta({"tool_calls": [FIRST_CALL]}),
        delta({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}),
        delta({}, "tool_calls"),
        "[DONE]",
    )  # fmt: skip
    assembler = StreamAssembler()
    for i in range(0, len(stream), 7):  # in pieces that cut events anywhere
        assembler.feed(stream[i : i + 7])
    body = assembler.completion(Usage(4, 2))
    assert body is not None
    completion = orjson.loads(body)
    message = completion["choices"][0]["message"]
    assert message["content"] == "Hello"
    assert message["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a":1}'}
    assert completion["choices"][0]["finish_reason"] == "tool_calls"
    assert completion["usage"]["total_tokens"] == 6
    again = StreamAssembler()
    again.feed(sse(*replay_chunks(completion, usage=True), "[DONE]"))
    assert orjson.loads(again.completion(Usage(4, 2)) or b"") == completion


@pytest.mark.parametrize(
    "tail",
    [
        b"",  # no [DONE]: cut
        sse({"error": {"message": "boom"}}),
        sse({"choices": [{"index": 1, "delta": {"content": "x"}}]}) + sse("[DONE]"),
    ],
)
def test_streams_that_are_not_whole_are_not_kept(tail):
    assembler = StreamAssembler()
    assembler.feed(sse(delta({"content": "x"})) + tail)
    assert assembler.completion(Usage(1, 1)) is None


def test_a_stream_without_usage_is_not_kept():
    assembler = StreamAssembler()
    assembler.feed(sse(delta({"content": "x"}), "[DONE]"))
    assert assembler.completion(None) is None
    assert assembler.completion(Usage(1, 1, estimated=True)) is None


class Broken:
    local = False

    def __init__(self, exc: BaseException | None = None, hang: bool = False) -> None:
        self.exc, self.hang, self.calls = exc, hang, 0

    async def get(self, key: str) -> bytes | None:
        self.calls += 1
        if self.hang:
            await asyncio.sleep(60)
        if self.exc is not None:
            raise self.exc
        return None

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        await self.get(key)

    async def aclose(self) -> None:
        return None


@pytest.mark.parametrize("backend", [Broken(StateUnavailable("redis: ConnectionError")),
                                     Broken(hang=True)])  # fmt: skip
async def test_a_failing_backend_is_skipped_and_logged_once(backend, caplog):
    caplog.set_level(logging.WARNING, "relaygate.cache")
    now = [0.0]
    service = CacheService(backend, ttl_s=10, shared=False, coalesce=False, clock=lambda: now[0])
    with pytest.raises(Unavailable):
        await asyncio.wait_for(service.lookup("k"), 2)
    with pytest.raises(Unavailable):  # not asked again for a while
        await service.lookup("k")
    await service.store("k", Entry(b"{}", "p", "m", Usage(), 0))
    assert backend.calls == 1
    now[0] = 10.0
    with pytest.raises(Unavailable):
        await asyncio.wait_for(service.lookup("k"), 2)
    assert backend.calls == 2
    assert len([r for r in caplog.records if r.name == "relaygate.cache"]) == 1


async def test_coalescing_hands_the_leaders_entry_to_waiters():
    service = CacheService(MemoryCache(10, 1 << 20), ttl_s=10, shared=False, coalesce=True)
    assert service.lead("k") is None  # the first leads
    waiting = service.lead("k")
    assert waiting is not None
    entry = Entry(b"{}", "p", "m", Usage(1, 1), 0.5)
    task = asyncio.ensure_future(service.wait(waiting, 5))
    service.done("k", entry)
    assert await task == entry
    assert service.lead("k") is None  # the next miss leads again
    late = service.lead("k")
    assert late is not None
    assert await service.wait(late, 0.05) is None  # bounded
