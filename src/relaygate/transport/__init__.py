"""The upstream transport seam (SPEC §11a, design.md "Transport"): how a provider's HTTP request
leaves the gateway. Callers hold the `Transport` Protocol (base.py), never a concrete client:
the library transport (library.py, aiohttp: proxies, TLS options, bounded pools), the HTTP/2 one
(http2.py, httpx with h2), the own HTTP/1.1 client (own.py, the fast one where none of those is
asked for) and a mock for unit tests (mock.py); pool.py holds one per provider."""

from relaygate.transport.base import NO_OPTIONS, RequestOptions, Transport
from relaygate.transport.errors import (
    BodyTooLarge,
    ConnectTimeout,
    HeadersTooLarge,
    ProxyError,
    TransportError,
)
from relaygate.transport.options import (
    TransportOptions,
    env_proxy_for,
    needs_library,
    options_for,
)

__all__ = [
    "NO_OPTIONS",
    "BodyTooLarge",
    "ConnectTimeout",
    "HeadersTooLarge",
    "ProxyError",
    "RequestOptions",
    "Transport",
    "TransportError",
    "TransportOptions",
    "env_proxy_for",
    "needs_library",
    "options_for",
]
