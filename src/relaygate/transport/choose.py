"""Which library transport serves a provider's options: the HTTP/2 one when `http2: true`,
else the aiohttp one. (The own HTTP/1.1 client is chosen above this, by options.needs_library,
until it moves into this package.)"""

from __future__ import annotations

from relaygate.transport.base import Transport
from relaygate.transport.options import TransportOptions


def library_transport(options: TransportOptions) -> Transport:
    if options.http2:
        from relaygate.transport.http2 import Http2Transport  # imports httpx and h2

        return Http2Transport(options)
    from relaygate.transport.library import LibraryTransport

    return LibraryTransport(options)
