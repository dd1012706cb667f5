"""The library transport: aiohttp's ClientSession (a well-kept client) with the bounds SPEC §11a
asks for. A key's own proxy per request, else the provider's `proxy:`, else the environment's
(HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY, lower-case forms too: options.env_proxy, since
aiohttp's `trust_env` skips ALL_PROXY); CONNECT
tunnels with proxy credentials, SOCKS5 through aiohttp-socks (one connector per SOCKS proxy);
TLS as the provider configured it; at most `max_connections_per_host` connections per host,
requests past them wait in aiohttp's queue; idle connections closed after `keepalive_s`; bodies
decoded here under a cap; header count and line sizes bounded by aiohttp's parser. A request
that meets a reused keep-alive connection the upstream just closed is sent once more."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import aiohttp
import aiohttp_socks

from relaygate.transport._library_response import LibraryResponse
from relaygate.transport.base import NO_OPTIONS, Body, RequestOptions, streamed_body
from relaygate.transport.errors import (
    ConnectTimeout,
    HeadersTooLarge,
    ProxyError,
    TransportError,
)
from relaygate.transport.options import TransportOptions, env_proxy, warn_unverified

log = logging.getLogger("relaygate.transport")

SOCKS_ERRORS = (aiohttp_socks.ProxyError, aiohttp_socks.ProxyConnectionError)

MAX_SOCKS_PROXIES = 256  # one connector each; as many as the config names
_SOCKS = ("socks5://", "socks5h://")


class LibraryTransport:
    """One per provider (its TLS and limits); keys' proxies come per request."""

    def __init__(self, options: TransportOptions) -> None:
        self.options = options
        self._ssl = options.ssl_context()
        self._sessions: dict[str | None, aiohttp.ClientSession] = {}
        self._trace = aiohttp.TraceConfig()
        self._trace.on_connection_reuseconn.append(_mark_reused)
        self.closed = False
        warn_unverified(options)

    # --- sessions -----------------------------------------------------------------------------
    def _session(self, socks: str | None) -> aiohttp.ClientSession:
        session = self._sessions.get(socks)
        if session is None:
            if self.closed:
                raise RuntimeError("the transport is closed")
            if len(self._sessions) > MAX_SOCKS_PROXIES:
                raise ProxyError("too many different SOCKS proxies")
            session = self._sessions[socks] = self._new_session(socks)
        return session

    def _new_session(self, socks: str | None) -> aiohttp.ClientSession:
        o = self.options
        pool: dict[str, Any] = dict(
            limit=0,  # the bound is per host
            limit_per_host=o.max_connections_per_host,
            keepalive_timeout=o.keepalive_s,
            ssl=self._ssl,
            ttl_dns_cache=300,
        )
        connector: aiohttp.BaseConnector
        if socks is None:
            connector = aiohttp.TCPConnector(**pool)
        else:
            connector = aiohttp_socks.ProxyConnector.from_url(
                socks, rdns=socks.startswith("socks5h"), **pool
            )
        line = max(o.max_header_bytes // 8, 1024)  # one line may take an eighth of the head
        return aiohttp.ClientSession(
            connector=connector,
            trust_env=False,  # the environment's proxies are read per request: env_proxy
            auto_decompress=False,  # decoded under the cap (_decode.py)
            timeout=aiohttp.ClientTimeout(
                total=None, connect=o.connect_timeout_s, sock_connect=o.connect_timeout_s
            ),
            max_line_size=line,
            max_field_size=line,
            max_headers=o.max_header_count,
            trace_configs=[self._trace],
            skip_auto_headers=("User-Agent",),
        )

    # --- the Transport Protocol ---------------------------------------------------------------
    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: Body,
        options: RequestOptions = NO_OPTIONS,
    ) -> LibraryResponse:
        proxy = options.proxy or self.options.proxy or env_proxy(url)
        socks = proxy if proxy and proxy.startswith(_SOCKS) else None
        session = self._session(socks)
        sent = dict(headers)
        if not any(name.lower() == "accept-encoding" for name in sent):
            sent["Accept-Encoding"] = "gzip, deflate"
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.options.connect_timeout_s,
            sock_connect=self.options.connect_timeout_s,
            sock_read=options.read_timeout_s,
        )
        streamed = streamed_body(body, sent)
        # a bare iterable body cannot be sent twice; a StreamedBody starts again on each read
        resend = isinstance(body, bytes | None) or streamed is not None
        while True:
            ctx = SimpleNamespace(reused=False)
            try:
                resp = await session.request(
                    method,
                    url,
                    headers=sent,
                    data=body if streamed is None else streamed.chunks(),
                    proxy=None if socks else proxy,
                    timeout=timeout,
                    allow_redirects=False,
                    trace_request_ctx=ctx,
                )
            except aiohttp_socks.ProxyTimeoutError:
                raise ConnectTimeout("no answer from the SOCKS proxy in time") from None
            except SOCKS_ERRORS:
                raise ProxyError("the SOCKS proxy refused or failed the connection") from None
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if ctx.reused and resend and not isinstance(exc, aiohttp.ClientConnectorError):
                    resend = False  # a stale keep-alive connection: once more, never the key's
                    log.debug("a reused connection to %s was closed; sent again", self.options.name)
                    continue
                raise _mapped(exc) from None
            except aiohttp.ClientError as exc:
                raise _mapped(exc) from None
            except TimeoutError as exc:  # aiohttp's connect timeouts are TimeoutErrors too
                raise _mapped(exc) from None
            if resp.status == 407 and proxy and not socks:  # a plain-http request's proxy
                resp.release()
                raise ProxyError("the proxy refused the credentials (407)")
            return LibraryResponse(resp, self.options.max_body_bytes)

    async def aclose(self) -> None:
        self.closed = True
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()


async def _mark_reused(
    session: aiohttp.ClientSession, ctx: SimpleNamespace, params: object
) -> None:
    request_ctx = ctx.trace_request_ctx
    if request_ctx is not None:
        request_ctx.reused = True


def _mapped(exc: BaseException) -> BaseException:
    """aiohttp's errors as the seam's: the way failed (TransportError, never the key's fault),
    or the upstream did (OSError, TimeoutError). Messages name no URL or credential."""
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return ProxyError("could not connect to the proxy")
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return ProxyError(f"the proxy refused the connection ({exc.status})")
    if isinstance(exc, aiohttp.ConnectionTimeoutError) or (
        isinstance(exc, TimeoutError) and not isinstance(exc, aiohttp.SocketTimeoutError)
    ):
        return ConnectTimeout("no connection to the upstream within the connect timeout")
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return TimeoutError("the upstream went silent")
    if isinstance(exc, aiohttp.ClientResponseError) and exc.status == 400:  # the parser
        text = str(exc.message).lower()
        if any(word in text for word in ("header", "line", "too long", "got more than")):
            return HeadersTooLarge("the upstream's answer head is past the header bounds")
        return ConnectionError("the upstream sent an answer that is not HTTP")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return ConnectionError("the upstream's TLS certificate was not accepted")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ConnectionRefusedError("could not connect to the upstream")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return ConnectionResetError("the upstream closed the connection")
    if isinstance(exc, OSError):
        return ConnectionError(f"the connection failed: {type(exc).__name__}")
    if isinstance(exc, TransportError):
        return exc
    return ConnectionError(f"the upstream call failed: {type(exc).__name__}")
