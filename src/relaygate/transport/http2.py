"""The HTTP/2 transport (`transport: {http2: true}`): httpx with h2, clients per proxy (the
provider's or the environment's, and each key's own), TLS as the provider configured it, ALPN
choosing h2 where the upstream offers it (HTTP/1.1 otherwise). httpx runs at most 100 calls at
once on one HTTP/2 connection and opens no second one, so calls are spread over lanes (a client
each, one connection each over HTTP/2), a new lane when every lane is full, up to
`max_connections_per_host` calls in all. Bounds as the library transport's: a pool of
`max_connections_per_host` connections with a wait bounded by the connect timeout,
idle connections closed after `keepalive_s`, bodies decoded under the cap (_decode.py), the head
bounded by h2's header-list limit (64 KiB) and `max_header_count`. SOCKS is not offered here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import cast

import httpx

from relaygate.transport._decode import BoundedDecoder
from relaygate.transport.base import NO_OPTIONS, Body, RequestOptions, streamed_body
from relaygate.transport.errors import (
    BodyTooLarge,
    ConnectTimeout,
    HeadersTooLarge,
    ProxyError,
    TransportError,
)
from relaygate.transport.options import TransportOptions, warn_unverified

Content = bytes | AsyncIterable[bytes] | None
MAX_CLIENTS = 256  # one set of lanes per proxy; as many as the config names
STREAMS_PER_CONNECTION = 100  # httpx's cap on the calls one HTTP/2 connection carries at once
# the connection ended under a request (a GOAWAY, a reset, a read or write on a closed socket):
# it carries many streams at once, so this is the way's failure, never a key's (SPEC §11a)
_CUT = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.CloseError)


class _Lane:
    """One httpx client (over HTTP/2: one connection) and the calls it carries now."""

    __slots__ = ("busy", "client", "h2")

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.busy = 0
        self.h2: bool | None = None  # its last answer came over HTTP/2 (None: none came yet)


class Http2Response:
    __slots__ = ("_closing", "_decoder", "_lane", "_resp", "http_version", "status")

    def __init__(
        self, resp: httpx.Response, max_body_bytes: int, lane: _Lane | None = None
    ) -> None:
        self._resp = resp
        self._lane = lane
        self.status = resp.status_code
        self.http_version = resp.http_version
        self._decoder = BoundedDecoder(resp.headers.get("content-encoding", ""), max_body_bytes)
        self._closing: asyncio.Task[None] | None = None

    @property
    def headers(self) -> Mapping[str, str]:
        return self._resp.headers

    async def read(self, limit: int) -> bytes:
        self._decoder.limit = min(self._decoder.limit, limit)
        return b"".join([piece async for piece in self.iter_chunks()])

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        decoder = self._decoder
        try:
            async for data in self._resp.aiter_raw():
                out = decoder.feed(data)
                if out:
                    yield out
            tail = decoder.end()
        except BodyTooLarge:
            self.close()
            raise
        except httpx.TimeoutException:
            raise TimeoutError("the upstream went silent") from None
        except _CUT:  # GOAWAY or a reset connection, for every stream on it: the way's
            raise TransportError("the upstream closed the HTTP/2 connection") from None
        except httpx.TransportError as exc:
            raise ConnectionResetError(f"the stream broke: {type(exc).__name__}") from None
        finally:
            self._release()
        if tail:
            yield tail

    def close(self) -> None:
        self._release()
        if self._closing is None and not self._resp.is_closed:
            self._closing = asyncio.get_running_loop().create_task(self._resp.aclose())

    def _release(self) -> None:
        lane, self._lane = self._lane, None
        if lane is not None:
            lane.busy -= 1


class Http2Transport:
    def __init__(self, options: TransportOptions) -> None:
        self.options = options
        self._ssl = options.ssl_context()
        self._clients: dict[str | None, list[_Lane]] = {}
        self._max_lanes = max(1, -(-options.max_connections_per_host // STREAMS_PER_CONNECTION))
        self.closed = False
        warn_unverified(options)

    def _lane(self, proxy: str | None) -> _Lane:
        """The least busy lane of this proxy's; a new one when every lane carries
        STREAMS_PER_CONNECTION calls (httpx runs no more on one HTTP/2 connection and opens
        no second one: the calls past it would wait), up to `max_connections_per_host` calls
        in all. Once the upstream is known to answer over HTTP/1.1, the first lane only."""
        lanes = self._clients.get(proxy)
        if lanes is None:
            if self.closed:
                raise RuntimeError("the transport is closed")
            if len(self._clients) > MAX_CLIENTS:
                raise ProxyError("too many different proxies")
            lanes = self._clients[proxy] = [_Lane(self._client(proxy, first=True))]
        if lanes[0].h2 is False:  # the upstream answers over HTTP/1.1: the first lane's pool
            return lanes[0]
        lane = min(lanes, key=_busy)
        if lane.busy >= STREAMS_PER_CONNECTION and len(lanes) < self._max_lanes:
            lane = _Lane(self._client(proxy, first=False))
            lanes.append(lane)
        return lane

    def _client(self, proxy: str | None, *, first: bool) -> httpx.AsyncClient:
        """The first lane's pool holds `max_connections_per_host` connections (all of them
        over HTTP/1.1); each further lane's one HTTP/2 connection."""
        o = self.options
        size = o.max_connections_per_host if first else 1
        return httpx.AsyncClient(
            http2=True,
            verify=self._ssl,
            proxy=proxy,
            trust_env=proxy is None,  # HTTPS_PROXY, ALL_PROXY, NO_PROXY (httpx reads them)
            limits=httpx.Limits(
                max_connections=size,
                max_keepalive_connections=size,
                keepalive_expiry=o.keepalive_s,
            ),
            timeout=httpx.Timeout(None, connect=o.connect_timeout_s, pool=o.connect_timeout_s),
            follow_redirects=False,
        )

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: Body,
        options: RequestOptions = NO_OPTIONS,
    ) -> Http2Response:
        proxy = options.proxy or self.options.proxy
        if proxy and proxy.startswith("socks"):
            raise ProxyError("SOCKS proxies are served by the HTTP/1.1 library transport only")
        lane = self._lane(proxy)
        client = lane.client
        sent = dict(headers)
        if not any(name.lower() == "accept-encoding" for name in sent):
            sent["Accept-Encoding"] = "gzip, deflate"
        timeout = httpx.Timeout(
            None,
            connect=self.options.connect_timeout_s,
            pool=self.options.connect_timeout_s,
            read=options.read_timeout_s,
        )
        streamed = streamed_body(body, sent)
        content = streamed.chunks() if streamed is not None else cast(Content, body)
        request = client.build_request(method, url, headers=sent, content=content, timeout=timeout)
        lane.busy += 1
        try:
            resp = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            lane.busy -= 1
            raise _mapped(exc) from None
        except BaseException:
            lane.busy -= 1
            raise
        lane.h2 = resp.http_version == "HTTP/2"
        answer = Http2Response(resp, self.options.max_body_bytes, lane)
        if len(resp.headers) > self.options.max_header_count:
            answer.close()
            raise HeadersTooLarge("the upstream's answer head is past the header bounds")
        return answer

    async def aclose(self) -> None:
        self.closed = True
        lanes, self._clients = [lane for each in self._clients.values() for lane in each], {}
        for lane in lanes:
            await lane.client.aclose()


def _busy(lane: _Lane) -> int:
    return lane.busy


def _mapped(exc: httpx.HTTPError) -> BaseException:
    if isinstance(exc, httpx.ProxyError):
        return ProxyError("the proxy refused the connection")
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return ConnectTimeout("no connection to the upstream within the connect timeout")
    if isinstance(exc, httpx.TimeoutException):
        return TimeoutError("the upstream went silent")
    if isinstance(exc, httpx.ConnectError):
        return ConnectionRefusedError("could not connect to the upstream")
    if isinstance(exc, _CUT):
        return TransportError("the upstream closed the HTTP/2 connection")
    if isinstance(exc, httpx.TransportError):
        return ConnectionError(f"the upstream call failed: {type(exc).__name__}")
    return TransportError(f"the upstream call failed: {type(exc).__name__}")
