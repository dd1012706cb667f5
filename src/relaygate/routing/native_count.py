"""Exact token counts from an upstream that counts in the door's own format (SPEC §7a: Anthropic's
`/v1/messages/count_tokens` answers exactly from Anthropic targets, estimated otherwise). One try
on the first target of the plan with a key of its pool; the count is free at the upstream, so the
key's request counts are given back. A key the upstream refuses is reported as any attempt's
failure would be; anything else wrong (no key free, a timeout, an answer without a count) gives
None and the caller estimates."""

from __future__ import annotations

import logging

from relaygate.providers.base import native_codec
from relaygate.routing.attempts import AttemptLoop
from relaygate.transport import NO_OPTIONS, RequestOptions
from relaygate.types import NativeBody, Target

log = logging.getLogger("relaygate.attempts")
COUNT_TIMEOUT_S = 10.0
MAX_COUNT_BODY = 64 * 1024


async def native_count(loop: AttemptLoop, plan: list[Target], native: NativeBody) -> int | None:
    if not plan:
        return None
    target = plan[0]
    provider = loop.providers[target.provider]
    codec = native_codec(provider, native.door)
    count = getattr(codec, "count_request", None)
    parse = getattr(codec, "parse_count", None)
    if count is None or parse is None:
        return None
    lease = loop.pools[target.provider].acquire(0)
    if lease is None:
        return None
    response = None
    try:
        request = count(provider, native, target.model, lease.secret)
        timeout = min(provider.config.timeout_s, COUNT_TIMEOUT_S)
        with loop.watchdog.guard(timeout):
            proxy = lease.proxy
            options = NO_OPTIONS if proxy is None else RequestOptions(proxy=proxy)
            transport = loop.session(target.provider)
            response = await provider.send(transport, request, timeout_s=None, options=options)
            raw = await response.read(MAX_COUNT_BODY)
        if response.status >= 400:
            failure = provider.classify_error(response.status, response.headers, raw)
            if failure.kind in ("key_rejected", "quota_exhausted", "rate_limited"):
                lease.failed(failure)
                lease = None
            return None
        tokens: int | None = parse(raw)
        return tokens
    except (OSError, TimeoutError, ValueError) as exc:  # TransportError is an OSError
        log.info("token count on %s failed: %s", target.provider, type(exc).__name__)
        return None
    finally:
        if response is not None:
            response.close()
        if lease is not None:
            lease.unused()
