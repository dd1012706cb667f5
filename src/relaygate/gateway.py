"""Gateway: the in-process facade over routing, key pools, retries and client keys. The HTTP
server and the library both go through it; it needs no HTTP server of its own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from relaygate._logging import Redactor
from relaygate.auth.clients import ClientRegistry
from relaygate.config.load import load_config
from relaygate.config.model import Config, ProviderConfig
from relaygate.errors import InvalidRequest, UpstreamError, UpstreamTimeout
from relaygate.keys.pool import KeyPool
from relaygate.providers import registry
from relaygate.providers._sse import SSEBuffer, parse_event
from relaygate.providers.base import Provider
from relaygate.routing.attempts import AttemptLoop, Completed, StreamStarted
from relaygate.routing.router import Router
from relaygate.storage.sqlite import SQLiteStore, open_store
from relaygate.types import Usage

log = logging.getLogger("relaygate.gateway")
FLUSH_EVERY_S = 1.0


def build_providers(config: Config) -> dict[str, Provider]:
    specs = {n: p for n, p in config.providers.items() if p.enabled}
    if not specs:  # a newcomer's first call works with no provider key at all
        specs = {registry.FALLBACK: ProviderConfig(type=registry.FALLBACK)}
    return {name: registry.create(name, spec) for name, spec in specs.items()}


def prompt_estimate(body: dict[str, Any], raw_size: int | None = None) -> int:
    """A rough prompt token count (4 bytes a token), for reservations and cut-off streams."""
    size = raw_size if raw_size is not None else len(orjson.dumps(body.get("messages", [])))
    return max(1, size // 4)


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
        self.store: SQLiteStore | None = open_store(self.config.database_url) if persist else None
        self.clients = ClientRegistry(self.config, self.store)
        self.attempts = AttemptLoop(
            providers=self.providers,
            pools=self.pools,
            session=self.session,
            retry=self.config.retries,
        )
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        if self.store is not None:
            rows = self.store.load_key_states()
            for pool in self.pools.values():
                pool.restore(rows)
            self.clients.reload()

    @classmethod
    def from_env(cls, config_path: str | None = None, **kwargs: Any) -> Gateway:
        return cls(load_config(config_path), **kwargs)

    # --- lifecycle ------------------------------------------------------------------------------
    def session(self) -> aiohttp.ClientSession:
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
        if self._started:
            return
        self._started = True
        if self.store is not None:
            self._tasks.append(asyncio.create_task(self._background()))

    async def _background(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY_S)
            try:
                await self.flush()
                await asyncio.to_thread(self.clients.reload)
            except Exception as exc:  # noqa: BLE001 (a background loop logs and goes on)
                log.warning("background flush failed: %s", type(exc).__name__)

    async def flush(self) -> None:
        rows = [row for pool in self.pools.values() for row in pool.take_dirty()]
        if rows and self.store is not None:
            await self.store.asave_key_states(rows)

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.flush()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.store is not None:
            self.store.close()
            self.store = None
        self._started = False

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- requests -------------------------------------------------------------------------------
    async def open_chat(
        self, body: dict[str, Any], *, raw_size: int | None = None
    ) -> Completed | StreamStarted:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise InvalidRequest("'model' must be a string.", param="model")
        stream = bool(body.get("stream"))
        options = body.get("stream_options")
        include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
        plan = self.router.resolve(model)
        return await self.attempts.run(
            plan,
            body,
            stream=stream,
            include_usage=include_usage,
            est_tokens=prompt_estimate(body, raw_size),
        )

    async def relay(
        self, started: StreamStarted, *, prompt_tokens: int = 0
    ) -> AsyncIterator[bytes]:
        """The rest of a started stream, as client bytes. Ends with an error event (and no [DONE])
        when the upstream fails mid-way; the key is settled with real or estimated usage."""
        relay, failure = started.relay, None
        try:
            yield started.first
            idle = started.provider.config.stream_idle_timeout_s
            while relay.error is None and not relay.finished:
                try:
                    async with asyncio.timeout(idle):
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
                yield UpstreamError(
                    f"The upstream failed mid-stream: {self.redact(failure.message)}"
                ).sse_event()
            elif not relay.finished:
                yield UpstreamError("The upstream stream ended before it was complete.").sse_event()
        except TimeoutError:
            yield UpstreamTimeout("The upstream stream went silent.").sse_event()
        except (aiohttp.ClientError, OSError):
            yield UpstreamError("The upstream connection was lost mid-stream.").sse_event()
        finally:
            started.response.close()
            usage = relay.usage or Usage(prompt_tokens, relay.content_events, estimated=True)
            if failure is not None:
                started.lease.failed(failure)
            else:
                started.lease.succeeded(usage)

    # --- the library API (SPEC §12) -------------------------------------------------------------
    async def chat(
        self, messages: list[dict[str, Any]] | None = None, **params: Any
    ) -> dict[str, Any]:
        """One chat completion, OpenAI-shaped, through the same routing, pools and retries."""
        body = {**params, "messages": messages or params.get("messages"), "stream": False}
        result = await self.open_chat(body)
        assert isinstance(result, Completed)
        out: dict[str, Any] = orjson.loads(result.body)
        return out

    async def stream(
        self, messages: list[dict[str, Any]] | None = None, **params: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """Yields OpenAI chat.completion.chunk dicts; raises on an error before the first chunk."""
        body = {**params, "messages": messages or params.get("messages"), "stream": True}
        started = await self.open_chat(body)
        assert isinstance(started, StreamStarted)
        sse = SSEBuffer()
        async for data in self.relay(started, prompt_tokens=prompt_estimate(body)):
            for block in sse.feed(data):
                _, payload = parse_event(block)
                if payload is None or payload.startswith(b"[DONE]"):
                    continue
                chunk = orjson.loads(payload)
                if "error" in chunk:
                    raise UpstreamError(str(chunk["error"].get("message")))
                yield chunk

    def key_states(self) -> list[dict[str, Any]]:
        return [state for pool in self.pools.values() for state in pool.states()]

    def models(self) -> list[str]:
        return self.router.model_ids()
