"""The gateway's transports: one per provider, chosen and built at start (SPEC §11a). `auto`
picks the library transport when the provider needs what the own client does not speak (its own
proxy, a key's proxy, an environment proxy for its base URL, a TLS option, HTTP/2), else the own
HTTP/1.1 client, which keeps the measured speed; `own` and `library` force the choice. TLS files
are read and the `verify: false` warning logged here, at start; `http2: true` without the h2
package is one clear start-up error. The transports belong to one event loop: a gateway used
from another loop (a test's `asyncio.run`, the CLI) gets a fresh set there."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import ssl
from collections.abc import Mapping

from relaygate.config.model import ProviderConfig
from relaygate.errors import ConfigError
from relaygate.transport.base import Transport
from relaygate.transport.choose import library_transport
from relaygate.transport.options import (
    TransportOptions,
    env_proxy_for,
    needs_library,
    options_for,
)
from relaygate.transport.own import OwnTransport

log = logging.getLogger("relaygate.transport")

# provider name -> (its base URL, its config)
Specs = Mapping[str, tuple[str, ProviderConfig]]


def choose(name: str, base_url: str, config: ProviderConfig) -> tuple[str, TransportOptions]:
    """("own" or "library", the provider's options)."""
    options = options_for(name, config)
    env = base_url.startswith(("http://", "https://")) and env_proxy_for(base_url)
    keyed = any(spec.proxy for spec in config.keys)
    kind = "library" if needs_library(options, env_proxy=env, keys_have_proxies=keyed) else "own"
    if kind == "library" and options.http2 and importlib.util.find_spec("h2") is None:
        raise ConfigError(
            f"providers.{name}.transport.http2: needs the h2 package "
            "(pip install 'relaygate[http2]')"
        )
    return kind, options


class Transports:
    """`get(provider)`: the transport its calls go through."""

    def __init__(self, specs: Specs) -> None:
        self.kinds: dict[str, str] = {}
        self._options: dict[str, TransportOptions] = {}
        for name, (base_url, config) in specs.items():
            self.kinds[name], self._options[name] = choose(name, base_url, config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._made: dict[str, Transport] = self._build()  # at start: TLS files read, warnings

    def _build(self) -> dict[str, Transport]:
        made: dict[str, Transport] = {}
        for name, kind in self.kinds.items():
            options = self._options[name]
            try:
                made[name] = (
                    library_transport(options) if kind == "library" else OwnTransport(options)
                )
            except (OSError, ssl.SSLError) as exc:  # a TLS file missing or not PEM
                raise ConfigError(
                    f"providers.{name}.tls: the certificate files cannot be used "
                    f"({type(exc).__name__})"
                ) from None
            log.debug("provider %s: the %s transport", name, kind)
        return made

    def get(self, provider: str) -> Transport:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            if self._loop is not None or not self._made:  # another loop, or closed: anew
                self._made = self._build()
            self._loop = loop
        return self._made[provider]

    async def aclose(self) -> None:
        made, self._made = self._made, {}
        self._loop = None
        for transport in made.values():
            await transport.aclose()
