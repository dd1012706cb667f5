"""A provider's transport settings (config: `proxy`, `tls`, `transport`), read once into a frozen
record, the SSL context they describe, and which implementation serves them."""

from __future__ import annotations

import logging
import ssl
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

from relaygate.config.model import ProviderConfig

log = logging.getLogger("relaygate.transport")


@dataclass(frozen=True, slots=True)
class TransportOptions:
    name: str = "upstream"  # the provider's name, for log lines
    kind: str = "auto"  # auto | own | library
    http2: bool = False
    proxy: str | None = None  # the provider's proxy (a key's own wins)
    ca_bundle: str | None = None
    verify: bool = True
    client_cert: str | None = None
    client_key: str | None = None
    max_connections_per_host: int = 1000
    keepalive_s: float = 30.0
    connect_timeout_s: float = 10.0
    max_body_bytes: int = 64 * 1024 * 1024
    max_header_count: int = 100
    max_header_bytes: int = 64 * 1024

    def __repr__(self) -> str:  # the proxy may hold credentials
        return f"TransportOptions(name={self.name!r}, kind={self.kind!r}, http2={self.http2})"

    def ssl_context(self) -> ssl.SSLContext:
        """The CA bundle (else the system's trust store), verification, a client certificate.
        Reads files: call it at start, off the request path."""
        context = ssl.create_default_context(cafile=self.ca_bundle)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.client_cert:
            context.load_cert_chain(self.client_cert, self.client_key)
        return context


def options_for(name: str, provider: ProviderConfig) -> TransportOptions:
    """The provider's settings (its keys' own proxies travel with each request)."""
    tls, t = provider.tls, provider.transport
    options = TransportOptions(
        name=name,
        kind=t.kind,
        http2=t.http2,
        proxy=provider.proxy,
        ca_bundle=tls.ca_bundle,
        verify=tls.verify,
        client_cert=tls.client_cert,
        client_key=tls.client_key,
        max_connections_per_host=t.max_connections_per_host,
        keepalive_s=t.keepalive_s,
        connect_timeout_s=t.connect_timeout_s,
        max_body_bytes=t.max_body_bytes,
        max_header_count=t.max_header_count,
        max_header_bytes=t.max_header_bytes,
    )
    return options


def env_proxy(url: str) -> str | None:
    """The environment's proxy for `url`: HTTPS_PROXY or HTTP_PROXY by its scheme, else
    ALL_PROXY (lower-case forms first, as curl reads them), None when NO_PROXY names its host."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy:
        return None
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    return None if bypass(parts.hostname or "", proxies) else proxy


def env_proxy_for(url: str) -> bool:
    return env_proxy(url) is not None


def needs_library(options: TransportOptions, *, env_proxy: bool, keys_have_proxies: bool) -> bool:
    """`auto` picks the library transport when the own client cannot do what is asked: a
    proxy (the provider's, a key's or the environment's), a TLS option, HTTP/2."""
    if options.kind != "auto":
        return options.kind == "library"
    return bool(
        options.http2
        or options.proxy
        or keys_have_proxies
        or env_proxy
        or options.ca_bundle
        or not options.verify
        or options.client_cert
    )


def warn_unverified(options: TransportOptions) -> None:
    """Once at start: TLS verification is off for this provider."""
    if not options.verify:
        log.warning(
            "provider %s: TLS certificates are not verified (tls.verify: false); "
            "use this for a lab server only",
            options.name,
        )
