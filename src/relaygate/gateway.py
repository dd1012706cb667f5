"""Gateway: the in-process facade over routing, key pools, retries, client limits and the ledger.
The HTTP server and the library both go through it; it needs no HTTP server of its own."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson

from relaygate import chat_fields, embeddings
from relaygate._logging import Redactor
from relaygate.accounting import Accounting, Call, new_request_id
from relaygate.auth.clients import ClientInfo, ClientRegistry
from relaygate.cache.service import CacheService
from relaygate.config.load import load_config
from relaygate.config.model import Config, ProviderConfig
from relaygate.errors import (
    InvalidRequest,
    RelaygateError,
    UpstreamError,
    UpstreamTimeout,
)
from relaygate.inflight import SHUTTING_DOWN, Inflight, outcome
from relaygate.keys.pool import KeyPool
from relaygate.keys.sync import KeySync
from relaygate.lifecycle import Lifecycle, open_gateway_state
from relaygate.providers import registry
from relaygate.providers._sse import EventTooLarge, SSEBuffer, parse_event
from relaygate.providers.base import Provider
from relaygate.routing.attempts import AttemptLoop, Completed, StreamStarted
from relaygate.routing.deadlines import Watchdog
from relaygate.routing.discovery import Discovery
from relaygate.routing.router import Router
from relaygate.state import State
from relaygate.state.protocols import LedgerStore
from relaygate.transport import TransportError
from relaygate.transport.pool import Transports
from relaygate.types import Failure, NativeBody, Target, Usage
from relaygate.usage.ledger import CLIENT_CLOSED

log = logging.getLogger("relaygate.gateway")
LIBRARY_ROUTE = "library"


def build_providers(config: Config) -> dict[str, Provider]:
    specs = {n: p for n, p in config.providers.items() if p.enabled}
    if not specs:  # a newcomer's first call works with no provider key at all
        specs = {registry.FALLBACK: ProviderConfig(type=registry.FALLBACK)}
    return {name: registry.create(name, spec) for name, spec in specs.items()}


def _sse_event(error: RelaygateError) -> bytes:
    return error.sse_event()


def _estimated(prompt: int, completion: int) -> Usage:
    return Usage(prompt, completion, estimated=True)


class Gateway:
    def __init__(self, config: Config | None = None, *, persist: bool = True) -> None:
        self.config = config if config is not None else Config()
        self.redact = Redactor(self.config.secrets())
        self.providers = build_providers(self.config)
        self.pools = {
            name: KeyPool(
                name,
                p.config.keys,
                needs_key=p.needs_key,
                strategy=p.config.key_strategy,
                limits=p.config.key_limits,
                retry=self.config.retries,
            )
            for name, p in self.providers.items()
        }
        self.router = Router(self.config.routing, self.providers)
        self.discovery = Discovery(
            self.providers,
            self.pools,
            self.router,
            lambda name: self.transports.get(name),
            every_s=self.config.routing.discover_every_s,
        )
        self.persist = persist  # False: state in memory only (the library's throwaway gateway)
        self.state: State = open_gateway_state(self.config, persist)
        self.keysync = KeySync(self.pools, self.state.keys, self.state.shared)
        self.clients = ClientRegistry(self.config, self.state.clients)
        self.accounting = Accounting(
            self.config,
            self.state.admissions,
            self.state.ledger if persist else None,
            self.providers,
            self.pools.values,
            known=self.router.is_known,
        )
        attempts_metric = self.accounting.metrics.attempts
        attempt_counters: dict[tuple[str, str], Any] = {}  # providers x outcomes: bounded

        def on_attempt(provider: str, outcome: str) -> None:
            counter = attempt_counters.get((provider, outcome))
            if counter is None:  # labels() costs a lock and a lookup: once per combination
                counter = attempt_counters[provider, outcome] = attempts_metric.labels(
                    provider, outcome
                )
            counter.inc()

        self.transports = Transports(  # one per provider, chosen at start (SPEC 11a)
            {name: (p.base_url, p.config) for name, p in self.providers.items()}
        )
        self.watchdog = Watchdog()  # every attempt's and stream's deadline, on one timer
        self.attempts = AttemptLoop(
            providers=self.providers,
            pools=self.pools,
            session=self.transports.get,
            retry=self.config.retries,
            on_attempt=on_attempt,
            redact=self.redact,
            watchdog=self.watchdog,
        )
        self._session: aiohttp.ClientSession | None = None
        self.inflight = Inflight()  # the requests a shutdown waits for, then ends
        self.cache: CacheService | None = None  # the response cache, when enabled (SPEC §7b)
        if self.config.cache.enabled:
            c = self.config.cache
            self.cache = CacheService(
                self.state.cache, ttl_s=c.ttl_s, shared=c.shared, coalesce=c.coalesce
            )
        self.life = Lifecycle(self)

    @property
    def ledger_store(self) -> LedgerStore | None:
        """Where reports and the dashboard read the ledger; None for a gateway without one."""
        return self.state.ledger if self.persist else None

    @classmethod
    def from_env(cls, config_path: str | None = None, **kwargs: Any) -> Gateway:
        return cls(load_config(config_path), **kwargs)

    # --- lifecycle ------------------------------------------------------------------------------
    def session(self) -> aiohttp.ClientSession:
        """An aiohttp session for everything else (report deliveries)."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=0, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=30
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def start(self) -> None:
        """Restore what the state holds and start the background work (lifecycle.py)."""
        await self.life.start()

    async def flush(self) -> None:
        """Key states changed since the last flush; kept for the next one when the write fails."""
        await self.keysync.flush()

    async def aclose(self) -> None:
        if self.cache is not None:
            await self.cache.aclose()
        await self.life.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self.transports.aclose()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- requests -------------------------------------------------------------------------------
    async def begin(
        self,
        body: dict[str, Any],
        *,
        client: ClientInfo | None,
        route: str,
        raw_size: int | None = None,
        request_id: str | None = None,
        cached_tokens: int | None = None,
        audio_bound_s: float = 0.0,
    ) -> tuple[Call, list[Target]]:
        """Validate, route and admit one request (allowed models, rate limits, budget).
        `cached_tokens`: a response cache hit of that many tokens (no budget reserved).
        `audio_bound_s`: the most seconds of audio the request carries (reserved at the
        target's per-second price)."""
        if not self.life.started:
            await self.life.start()
        try:
            chat_fields.check(body)
        except InvalidRequest:
            self.accounting.refused("invalid")
            raise
        model = body.get("model")
        messages = body["messages"]
        try:
            plan = self.router.resolve(model)
        except RelaygateError:
            self.accounting.refused("model_not_found")
            raise
        size = raw_size if raw_size is not None else len(orjson.dumps(messages))
        prompt = int(size / self.config.limits.prompt_bytes_per_token) + 1
        call = Call(request_id or new_request_id(), route, client, bool(body.get("stream")), prompt)
        call.audio_bound_s = audio_bound_s
        await self.accounting.admit(call, body, plan, cached_tokens=cached_tokens)
        return call, plan

    async def open_chat(
        self,
        body: dict[str, Any],
        call: Call,
        plan: list[Target],
        native: NativeBody | None = None,
    ) -> Completed | StreamStarted:
        """Run the attempts. Whatever happens the call is settled here (a whole answer, an error,
        a cancel, a bug), except a started stream, which `relay` or `discard` settles. `native`:
        the client's own body, passed through to a target that speaks its format."""
        options = body.get("stream_options")
        include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
        try:
            result = await self.attempts.run(
                plan,
                body,
                stream=call.stream,
                include_usage=include_usage,
                est_tokens=call.prompt_estimate,
                native=native,
            )
        except BaseException as exc:
            status, code, attempts = outcome(exc, closing=self.inflight.closing)
            self.accounting.finish(
                call,
                target=plan[0] if plan else None,
                key_id=None,
                status=status,
                error_code=code,
                attempts=attempts,
            )
            raise
        call.ttft_ms = int((time.perf_counter() - call.t0) * 1000)
        if isinstance(result, Completed):
            usage = result.usage or _estimated(call.prompt_estimate, len(result.body) // 4)
            self.accounting.finish(
                call,
                target=result.target,
                key_id=result.key_id,
                status=200,
                usage=usage,
                attempts=result.attempts,
            )
        return result

    async def relay(
        self,
        started: StreamStarted,
        call: Call | None = None,
        error_event: Callable[[RelaygateError], bytes] | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """The rest of a started stream, as client bytes. Ends with an error event (and no [DONE])
        when the upstream fails mid-way or the shutdown grace runs out (`error_event` renders it;
        by default the SPEC's `data:` event); the key and the call are settled with the real
        usage, or an estimate of what was produced when the stream was cut or the client left."""
        relay, failure, error_code = started.relay, None, None
        event = error_event or _sse_event
        try:
            yield started.first
            idle = started.provider.config.stream_idle_timeout_s
            guard = self.watchdog.guard
            while relay.error is None and not relay.finished:
                try:
                    with guard(idle):  # the longest upstream silence, one shared timer
                        data = await anext(started.chunks)
                except StopAsyncIteration:
                    tail = relay.end()
                    if tail:
                        yield tail
                    break
                out = relay.feed(data)
                if out:
                    yield out
            if relay.error is not None:
                failure = relay.error
                failure.message = self.redact(failure.message)
                error = UpstreamError(f"The upstream failed mid-stream: {failure.message}")
            elif not relay.finished:
                error = UpstreamError("The upstream stream ended before it was complete.")
            else:
                error = None
            if error is not None:
                error_code = error.code
                if not relay.error_sent:  # else the upstream's own failure event went out
                    yield event(error)
        except TimeoutError:
            error_code = UpstreamTimeout.code
            yield event(UpstreamTimeout("The upstream stream went silent."))
        except TransportError as exc:  # a bound of the way (the body's cap): not the key's
            error_code = exc.code
            upstream = UpstreamTimeout if exc.status == 504 else UpstreamError
            yield event(upstream(f"The upstream answer was cut: {exc}.", code=exc.code))
        except (aiohttp.ClientError, OSError, EventTooLarge):
            error_code = UpstreamError.code
            yield event(UpstreamError("The upstream connection was lost mid-stream."))
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not (self.inflight.closing and task is not None and task.uncancel() == 0):
                error_code = CLIENT_CLOSED
                raise
            error_code = SHUTTING_DOWN.code  # the grace ran out: end with an error event
            yield event(SHUTTING_DOWN)
        except GeneratorExit:
            error_code = CLIENT_CLOSED
            raise
        finally:
            self._settle_stream(started, call, failure, error_code)

    def discard(self, started: StreamStarted, call: Call | None) -> None:
        """A started stream that will never be relayed (the client left before its first byte
        went out): close it and settle the key and the call."""
        self._settle_stream(started, call, None, CLIENT_CLOSED)

    def _settle_stream(
        self, started: StreamStarted, call: Call | None, failure: Failure | None, code: str | None
    ) -> None:
        if started.settled:
            return
        started.settled = True
        started.response.close()
        relay = started.relay
        usage = relay.usage or _estimated(call.prompt_estimate if call else 0, relay.content_events)
        if failure is not None:
            started.lease.failed(failure)
        else:
            started.lease.succeeded(usage)
        if call is not None:
            self.accounting.finish(
                call,
                target=started.target,
                key_id=started.lease.key_id,
                status=200,
                error_code=code,
                usage=usage,
                attempts=started.attempts,
            )

    # --- the library API (SPEC §12) -------------------------------------------------------------
    async def chat(
        self, messages: list[dict[str, Any]] | None = None, **params: Any
    ) -> dict[str, Any]:
        """One chat completion, OpenAI-shaped, through the same routing, pools and retries."""
        body = {**params, "messages": messages or params.get("messages"), "stream": False}
        call, plan = await self.begin(body, client=None, route=LIBRARY_ROUTE)
        result = await self.open_chat(body, call, plan)
        assert isinstance(result, Completed)
        out: dict[str, Any] = orjson.loads(result.body)
        return out

    async def stream(
        self, messages: list[dict[str, Any]] | None = None, **params: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """Yields OpenAI chat.completion.chunk dicts; raises on an error before the first chunk."""
        body = {**params, "messages": messages or params.get("messages"), "stream": True}
        call, plan = await self.begin(body, client=None, route=LIBRARY_ROUTE)
        started = await self.open_chat(body, call, plan)
        assert isinstance(started, StreamStarted)
        sse = SSEBuffer()
        async for data in self.relay(started, call):
            for block in sse.feed(data):
                _, payload = parse_event(block)
                if payload is None or payload.startswith(b"[DONE]"):
                    continue
                chunk = orjson.loads(payload)
                if "error" in chunk:
                    raise UpstreamError(str(chunk["error"].get("message")))
                yield chunk

    async def embed(self, input: Any, *, model: str, **params: Any) -> dict[str, Any]:
        """Embeddings of a string or a list (OpenAI's body: `encoding_format`, `dimensions`,
        `user`), OpenAI-shaped, through the same routing, pools, retries and limits."""
        return await embeddings.embed(self, input, model=model, **params)

    def key_states(self) -> list[dict[str, Any]]:
        return [state for pool in self.pools.values() for state in pool.states()]

    def models(self) -> list[str]:
        return self.router.model_ids()
