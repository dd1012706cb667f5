"""The `Transport` Protocol: one method that sends a request and returns once the status line
and headers arrived (an `UpstreamResponse` of types.py, body still to read), and `aclose`.
Every implementation raises TransportError (errors.py) where the way to the upstream failed;
the attempt loop maps it before OSError, since none of those blames the key. The own client
(own.py) refuses a `proxy` in the options: it speaks none, so a provider with a proxy is served
by the library transport (pool.py chooses)."""

from __future__ import annotations

from collections.abc import AsyncIterable, Mapping
from dataclasses import dataclass
from typing import Protocol, cast

from relaygate.types import StreamedBody, UpstreamResponse

# a StreamedBody (an upload of known length) is sent as it is read; a bare async iterable of
# bytes is sent chunked (the library transports only)
Body = bytes | StreamedBody | AsyncIterable[bytes] | None


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


def streamed_body(body: Body, headers: dict[str, str]) -> StreamedBody | None:
    """`body` when it is a StreamedBody (its length set as the Content-Length in `headers`)."""
    if body is None or isinstance(body, bytes) or getattr(body, "length", None) is None:
        return None
    streamed = cast(StreamedBody, body)
    headers["Content-Length"] = str(streamed.length)
    return streamed
