"""Which library transport serves a provider's options: the HTTP/2 one when `http2: true`,
else the aiohttp one. (Whether the library or the own HTTP/1.1 client serves a provider at all
is pool.py's choice, by options.needs_library.)"""

from __future__ import annotations

from relaygate.transport.base import Transport
from relaygate.transport.options import TransportOptions


def library_transport(options: TransportOptions) -> Transport:
    if options.http2:
        from relaygate.transport.http2 import Http2Transport  # imports httpx and h2

        return Http2Transport(options)
    from relaygate.transport.library import LibraryTransport

    return LibraryTransport(options)
