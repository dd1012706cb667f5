"""The response cache on the proxy path (SPEC §7b), used by http/proxy.py only when the cache is
enabled. `open` reads and translates the request as the proxy does, then looks it up: a hit is
answered here (admitted for the rate windows with no budget, one ledger row with cost 0, the
stored answer rendered in the door's format, as a stream when the request streams); a miss or a
bypass is opened through the core and handed back with a Capture, which keeps the answer when
it is complete (a whole 200, or a stream that ended with [DONE] and its usage).

`Cache-Control: no-cache` or `no-store` on the request bypasses the cache (no read, no write);
so does a cache backend that is away. Hits are labelled `hit`, others `miss` or `bypass`, in the
`x-relaygate-cache` header, the ledger's `cache` column and `/metrics`.

Door-generic: the key is the route, the model of the path and the canonical body
(cache/key.py), so another JSON door needs only its route in the table to be cached."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson
from starlette.types import Receive, Scope, Send

from relaygate.auth.clients import ClientInfo
from relaygate.cache.entry import Entry, StreamAssembler, replay_chunks
from relaygate.cache.service import CacheService, Unavailable
from relaygate.formats.base import Door
from relaygate.http._asgi import Render, answer_whole, encoded, read_body
from relaygate.http._common import parse_json
from relaygate.http.doors import Route
from relaygate.http.headers import limit_headers
from relaygate.http.uploads import content_type
from relaygate.routing.attempts import Completed, StreamStarted
from relaygate.types import Target, Usage

if TYPE_CHECKING:
    from relaygate.accounting import Call
    from relaygate.http.proxy import Proxy

_CACHE_CONTROL = b"cache-control"
_SSE_TAIL = ((b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no"))
HIT_KEY_ID = "cache"

Opened = tuple[Completed | StreamStarted, "Call", Door | None, "Capture | None"]


def no_cache(scope: Scope) -> bool:
    """Whether the request's Cache-Control says no-cache or no-store."""
    for name, value in scope["headers"]:
        if name == _CACHE_CONTROL:
            for part in value.decode("latin-1").split(","):
                word = part.strip().lower().partition("=")[0]
                if word in ("no-cache", "no-store"):
                    return True
    return False


class Capture:
    """Keeps a miss's answer when it is complete. `completed` / `streamed` (once, as the answer
    ends) take the entry and hand it to the coalesced waiters at once; `store` then writes it,
    after the client has its answer, within the cache's bound."""

    __slots__ = ("_assembler", "_cache", "_entry", "_key", "_lead", "_storable")

    def __init__(self, cache: CacheService, key: str, *, lead: bool, storable: bool) -> None:
        self._cache, self._key, self._lead = cache, key, lead
        self._storable = storable
        self._assembler: StreamAssembler | None = None
        self._entry: Entry | None = None

    def tap(self, render: Render | None, result: StreamStarted) -> Render | None:
        """What relays the stream: `render` fed through an assembler of the core's chunks."""
        if result.native or not self._storable:
            return render
        self._assembler = StreamAssembler()
        return _Tee(self._assembler, render)

    def completed(self, result: Completed, call: Call) -> None:
        usage = result.usage or Usage(call.prompt_estimate, len(result.body) // 4, estimated=True)
        target = result.target
        entry = Entry(result.body, target.provider, target.model, usage, call.cost_usd)
        entry.native = result.native
        self._finish(entry if self._storable else None)

    def streamed(self, result: StreamStarted, call: Call) -> None:
        entry, usage = None, result.relay.usage
        if self._assembler is not None and usage is not None:
            body = self._assembler.completion(usage)
            if body is not None:
                target = result.target
                entry = Entry(body, target.provider, target.model, usage, call.cost_usd)
        self._finish(entry)

    def _finish(self, entry: Entry | None) -> None:
        self._entry = entry
        if self._lead:
            self._lead = False
            self._cache.done(self._key, entry)

    async def store(self) -> None:
        entry, self._entry = self._entry, None
        if entry is not None:
            await self._cache.store(self._key, entry)


class _Tee:
    __slots__ = ("_assembler", "_render")

    def __init__(self, assembler: StreamAssembler, render: Render | None) -> None:
        self._assembler, self._render = assembler, render

    def feed(self, data: bytes) -> bytes:
        self._assembler.feed(data)
        return data if self._render is None else self._render.feed(data)

    def finish(self) -> bytes:
        return b"" if self._render is None else self._render.finish()


class CachedPath:
    """The proxy's path when the cache is enabled (see the module's docstring)."""

    def __init__(self, proxy: Proxy, cache: CacheService) -> None:
        self.proxy = proxy
        self.gw = proxy.gw
        self.cache = cache
        self._counters: dict[tuple[str, str], Any] = {}

    def count(self, route: str, word: str) -> None:
        counter = self._counters.get((route, word))
        if counter is None:  # routes x 3 words: bounded
            counter = self._counters[route, word] = self.gw.accounting.metrics.cache.labels(
                route, word
            )
        counter.inc()

    async def open(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        rid: str,
        route: Route,
        who: tuple[ClientInfo, bytes | None],
    ) -> Opened | None:
        """The opened call of a miss or a bypass with its capture, or None: a hit, answered."""
        gw, proxy, cache, (client, length) = self.gw, self.proxy, self.cache, who
        t0 = time.monotonic()
        raw = await read_body(receive, length, proxy.limit)
        cls = route.door
        body = cls.parse_form(raw, content_type(scope)) if cls.takes_forms else parse_json(raw)
        door: Door | None = None
        chat = body
        if not cls.same_as_core:
            door, chat = proxy._translate(body, rid, route)
        stream = bool(body.get("stream")) if door is None else door.stream
        key, lead, word = None, False, "bypass"
        if not no_cache(scope):
            key = cache.key_for(route=cls.route, body=body, client_id=client.id, model=route.model)
            try:
                entry = await cache.lookup(key)
            except Unavailable:
                key = None
            else:
                word = "miss"
                if entry is None and cache.coalesce:
                    leader = cache.lead(key)
                    if leader is None:
                        lead = True
                    else:  # an identical miss is running: its answer, within the deadline
                        left = gw.config.retries.deadline_s - (time.monotonic() - t0)
                        entry = await cache.wait(leader, left)
                if entry is not None and not (entry.native and stream):
                    hit = (door, body, chat, stream, len(raw))
                    await self._hit(send, rid, route, client, entry, hit)
                    return None
        self.count(cls.route, word)
        try:
            call, plan = await gw.begin(
                chat, client=client, route=cls.route, raw_size=len(raw), request_id=rid
            )
            call.cache = word
            if door is None:
                result = await proxy._run(chat, call, plan, None)
            else:
                result = await proxy._run_door(scope, door, body, chat, call, plan)
        except BaseException:
            if lead and key is not None:
                cache.done(key, None)
            raise
        capture = None
        if key is not None:
            storable = chat.get("n") in (None, 1)
            capture = Capture(cache, key, lead=lead, storable=storable)
        return result, call, None if door is None or result.native else door, capture

    async def _hit(
        self,
        send: Send,
        rid: str,
        route: Route,
        client: ClientInfo,
        entry: Entry,
        request: tuple[Door | None, dict[str, Any], dict[str, Any], bool, int],
    ) -> None:
        """Admit (allowed models and rate windows; no budget), settle at cost 0, answer."""
        door, body, chat, stream, size = request
        gw, cls = self.gw, route.door
        call, _ = await gw.begin(
            chat,
            client=client,
            route=cls.route,
            raw_size=size,
            request_id=rid,
            cached_tokens=entry.usage.total_tokens,
        )
        call.cache = "hit"
        call.ttft_ms = int((time.perf_counter() - call.t0) * 1000)
        if stream:
            answer = _replay(door, body, entry)
        elif entry.native or door is None:
            answer = entry.body
        else:
            answer = door.render(entry.completion())
        target = Target(entry.provider, entry.model)
        gw.accounting.finish(
            call, target=target, key_id=None, status=200, usage=entry.usage, attempts=0
        )
        self.count(cls.route, "hit")
        if entry.cost_usd > 0:
            gw.accounting.metrics.cache_saved.inc(entry.cost_usd)
        head = encoded(
            {
                **limit_headers(call.admission),
                "x-request-id": rid,
                "x-relaygate-provider": entry.provider,
                "x-relaygate-model": entry.model,
                "x-relaygate-key-id": HIT_KEY_ID,
                "x-relaygate-attempts": "0",
                "x-relaygate-cache": "hit",
            }
        )
        if not stream:
            await answer_whole(send, 200, head, answer)
            return
        head.extend(_SSE_TAIL)
        head.append((b"content-type", cls.stream_content_type))
        await send({"type": "http.response.start", "status": 200, "headers": head})
        await send({"type": "http.response.body", "body": answer})


def _replay(door: Door | None, body: dict[str, Any], entry: Entry) -> bytes:
    """A stored answer as the door's stream (the core's SSE for the chat door)."""
    completion = entry.completion()
    if door is None:
        options = body.get("stream_options")
        usage = isinstance(options, dict) and bool(options.get("include_usage"))
        chunks: Iterable[dict[str, Any]] = replay_chunks(completion, usage=usage)
        parts = [b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks]
        parts.append(b"data: [DONE]\n\n")
        return b"".join(parts)
    out = door.streamer()
    parts = [out.feed(chunk) for chunk in replay_chunks(completion, usage=True)]
    parts.append(out.end())
    return b"".join(parts)
