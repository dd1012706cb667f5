"""The attempt loop: an explicit loop over a plan of targets, each with its key pool, inside a
per-request deadline and a retry budget. Nothing is retried once a byte has reached the client."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from relaygate.config.model import RetryConfig
from relaygate.errors import (
    InvalidRequest,
    NoAvailableKeys,
    RelaygateError,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
)
from relaygate.keys.pool import KeyPool, Lease
from relaygate.providers._sse import EventTooLarge
from relaygate.providers.base import (
    KEEPS_CONTENT_TYPE,
    MAX_UPSTREAM_BODY,
    InBandFailure,
    NativeCodec,
    Provider,
    StreamRelay,
    codec_answer,
    native_codec,
)
from relaygate.routing.deadlines import Watchdog
from relaygate.transport import NO_OPTIONS, RequestOptions, Transport, TransportError
from relaygate.types import Failure, NativeBody, Target, UpstreamResponse, Usage

log = logging.getLogger("relaygate.attempts")


@dataclass(slots=True)
class Completed:
    """A whole non-streamed answer in OpenAI's shape (`native`: in the client's own format,
    passed through)."""

    body: bytes
    usage: Usage | None
    target: Target
    key_id: str
    attempts: int
    native: bool = False
    content_type: str | None = None  # a native answer's, as the upstream sent it


@dataclass(slots=True)
class StreamStarted:
    """A stream whose first output is ready; the caller relays the rest (see gateway.relay)."""

    first: bytes
    response: UpstreamResponse
    chunks: Any  # the upstream's async chunk iterator, already started
    relay: StreamRelay
    lease: Lease
    provider: Provider
    target: Target
    attempts: int
    settled: bool = False  # the key, the upstream answer and the call have been settled
    native: bool = False  # the client's own format, passed through (else OpenAI chunks)


class AttemptLoop:
    def __init__(
        self,
        *,
        providers: Mapping[str, Provider],
        pools: Mapping[str, KeyPool],
        session: Callable[[str], Transport],
        retry: RetryConfig,
        on_attempt: Callable[[str, str], None] | None = None,
        redact: Callable[[str], str] = str,
        watchdog: Watchdog | None = None,
    ) -> None:
        self.watchdog = watchdog or Watchdog()
        self.providers = providers
        self.pools = pools
        self.session = session
        self.retry = retry
        self.on_attempt = on_attempt or (lambda provider, outcome: None)
        self.redact = redact

    async def run(
        self,
        plan: list[Target],
        body: dict[str, Any],
        *,
        stream: bool,
        include_usage: bool,
        est_tokens: int = 0,
        native: NativeBody | None = None,
    ) -> Completed | StreamStarted:
        """`native`: the client's body in its door's format, passed through to targets that
        speak it; the others get `body` (OpenAI chat) translated."""
        deadline = time.monotonic() + self.retry.deadline_s
        attempts = 0
        last: Failure | None = None
        waits: list[float] = []
        untranslatable: RelaygateError | None = None
        for target in plan:
            provider, pool = self.providers[target.provider], self.pools[target.provider]
            server_failures = 0
            while server_failures < self.retry.max_attempts:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                lease = pool.acquire(est_tokens)
                if lease is None:
                    wait = pool.next_ready_in()
                    waits.append(wait if wait is not None else self.retry.default_cooldown_s)
                    break
                attempts += 1
                timeout = min(provider.config.timeout_s, remaining)
                result = await self._once(
                    provider,
                    lease,
                    target,
                    body,
                    stream=stream,
                    include_usage=include_usage,
                    timeout_s=timeout,
                    native=native,
                )
                if isinstance(result, _Untranslatable):  # this target cannot take it: next
                    attempts -= 1
                    lease.unused()
                    untranslatable = untranslatable or result.error
                    break
                if not isinstance(result, Failure):
                    self.on_attempt(target.provider, "ok")
                    result.attempts = attempts
                    return result
                self.on_attempt(target.provider, result.kind)
                _redact_failure(result, self.redact)  # upstreams echo keys in their errors
                lease.failed(result)
                last = result
                log.info(
                    "attempt %d on %s via %s failed: %s %s",
                    attempts,
                    target.provider,
                    lease.key_id,
                    result.kind,
                    result.status,
                )
                if result.kind == "bad_request":
                    raise _counted(_rejected(result), attempts)
                if result.kind in ("server", "timeout", "transport"):
                    server_failures += 1
                    await self._backoff(server_failures, deadline)
        if untranslatable is not None and last is None and not waits:
            raise _counted(untranslatable, attempts)
        raise _counted(self._final(last, waits, attempts), attempts)

    async def _backoff(self, n: int, deadline: float) -> None:
        delay = min(self.retry.backoff_max_s, self.retry.backoff_base_s * 2 ** (n - 1))
        delay *= random.uniform(0.5, 1.5)
        delay = min(delay, max(0.0, deadline - time.monotonic()))
        if delay > 0:
            await asyncio.sleep(delay)

    def _final(self, last: Failure | None, waits: list[float], attempts: int) -> RelaygateError:
        if last is not None and last.kind == "transport":  # the way failed, not the key
            error = UpstreamTimeout if last.status == 504 else UpstreamError
            return error(
                f"The way to the upstream failed ({attempts} attempts): {last.message}.",
                code=last.code,
            )
        if last is not None and last.kind == "timeout":
            return UpstreamTimeout(f"The upstream did not answer in time ({attempts} attempts).")
        if last is not None and last.kind == "server":
            return UpstreamError(
                f"The upstream failed after {attempts} attempts (last status {last.status})."
            )
        wait = min(waits) if waits else self.retry.default_cooldown_s
        return NoAvailableKeys(wait, "every key is cooling, exhausted or invalid")

    async def _once(
        self,
        provider: Provider,
        lease: Lease,
        target: Target,
        body: dict[str, Any],
        *,
        stream: bool,
        include_usage: bool,
        timeout_s: float,
        native: NativeBody | None,
    ) -> Completed | StreamStarted | Failure | _Untranslatable:
        codec = None if native is None else native_codec(provider, native.door)
        try:
            if codec is not None and native is not None:
                request = codec.build(provider, native, target.model, lease.secret)
            elif native is not None and native.only:
                raise InvalidRequest(f"{target.provider} does not serve this operation.")
            else:
                request = provider.upstream_request(
                    body, model=target.model, key=lease.secret, stream=stream
                )
        except InvalidRequest as exc:
            return _Untranslatable(exc)
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            # the translation reads nothing but the client's body: a shape it cannot read is
            # the body's fault, a 400 (or the next target), never a 500 after a paid call
            log.info("%s cannot translate the request: %s", target.provider, type(exc).__name__)
            return _Untranslatable(
                InvalidRequest(f"The request has a field of a shape {target.provider} cannot take.")
            )
        response: UpstreamResponse | None = None
        try:
            with self.watchdog.guard(timeout_s):  # the attempt, up to its first output
                proxy = lease.proxy
                options = NO_OPTIONS if proxy is None else RequestOptions(proxy=proxy)
                transport = self.session(target.provider)
                response = await provider.send(transport, request, timeout_s=None, options=options)
                if response.status >= 400:
                    raw = await response.read(1024 * 1024)
                    return provider.classify_error(response.status, response.headers, raw)
                if not stream:
                    raw = await response.read(MAX_UPSTREAM_BODY)
                    if codec is not None and native is not None:
                        out, usage = codec_answer(codec, raw, target.model, native)
                    else:
                        out, usage = provider.parse_response(raw, model=target.model)
                    lease.succeeded(usage)
                    done = Completed(out, usage, target, lease.key_id, 0, codec is not None)
                    if codec is not None and getattr(codec, KEEPS_CONTENT_TYPE, False):
                        done.content_type = response.headers.get("content-type")
                    return done
                started = await self._first_output(
                    provider, lease, target, response, include_usage, codec
                )
            if isinstance(started, Failure):
                return started
            response = None  # the caller owns it now
            return started
        except InBandFailure as exc:
            return exc.failure
        except TransportError as exc:  # before OSError: none of these blames the key
            return Failure("transport", exc.status, str(exc), code=exc.code)
        except TimeoutError:
            return Failure("timeout", 504, "no answer before the timeout")
        except (OSError, EventTooLarge) as exc:
            return Failure("server", 502, f"connection failed: {type(exc).__name__}")
        finally:
            if response is not None:
                response.close()

    async def _first_output(
        self,
        provider: Provider,
        lease: Lease,
        target: Target,
        response: UpstreamResponse,
        include_usage: bool,
        codec: NativeCodec | None,
    ) -> StreamStarted | Failure:
        if codec is not None:
            relay = codec.relay()
        else:
            relay = provider.stream_relay(model=target.model, include_usage=include_usage)
        chunks = response.iter_chunks().__aiter__()
        first = b""
        while not first:
            try:
                data = await anext(chunks)
            except StopAsyncIteration:
                first = relay.end()
                if not first:
                    return relay.error or Failure("server", 502, "the stream ended empty")
                break
            first = relay.feed(data)
            if relay.error is not None:
                return relay.error
        native = codec is not None
        return StreamStarted(
            first, response, chunks, relay, lease, provider, target, 0, native=native
        )


class _Untranslatable:
    """The provider cannot express this request (e.g. an image URL it cannot fetch)."""

    __slots__ = ("error",)

    def __init__(self, error: InvalidRequest) -> None:
        self.error = error


def _counted(error: RelaygateError, attempts: int) -> RelaygateError:
    error.attempts = attempts
    return error


def _rejected(failure: Failure) -> UpstreamRejected:
    return UpstreamRejected(
        failure.status, failure.message, type_=failure.type, code=failure.code, param=failure.param
    )


def _redact_failure(failure: Failure, redact: Callable[[str], str]) -> None:
    """Every text field of an upstream's error may reach the client: message, type, code, param."""
    failure.message = redact(failure.message)
    failure.type = None if failure.type is None else redact(failure.type)
    failure.code = None if failure.code is None else redact(failure.code)
    failure.param = None if failure.param is None else redact(failure.param)
