"""The `Transport` Protocol: one method that sends a request and returns once the status line
and headers arrived (an `UpstreamResponse` of types.py, body still to read), and `aclose`.

Adapter note for the own HTTP/1.1 client (providers/_http.py, UpstreamClient): its
`request(method, url, headers, body)` already returns an UpstreamResponse; it meets this
Protocol once it takes the keyword `options` (and refuses a `proxy` in it: it speaks no proxy,
so `options.needs_library` sends a provider with a proxy to the library transport) and its
`close` is offered as `aclose`. Its errors keep their classes (OSError subclasses); the attempt
loop maps TransportError (errors.py) first, since none of those blames the key."""

from __future__ import annotations

from collections.abc import AsyncIterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from relaygate.types import UpstreamResponse

Body = bytes | AsyncIterable[bytes] | None  # an async iterable is sent chunked (streamed uploads)


@dataclass(frozen=True, slots=True)
class RequestOptions:
    """Per-request choices: the key's own proxy (else the provider's, else the environment's),
    and the longest silence between two reads once the answer started (None: no bound here,
    the caller's deadline rules)."""

    proxy: str | None = None
    read_timeout_s: float | None = None


NO_OPTIONS = RequestOptions()


class Transport(Protocol):
    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: Body,
        options: RequestOptions = NO_OPTIONS,
    ) -> UpstreamResponse:
        """Send, and return once the status line and headers arrived. Raises TransportError
        (never the key's fault), OSError (the upstream's: connection refused or reset) or
        TimeoutError (read_timeout_s passed)."""

    async def aclose(self) -> None: ...
