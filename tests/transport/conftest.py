"""Fixtures of the transport's tests: a local certificate authority (trustme), TLS and plain
raw upstreams, forward proxies, and a library transport closed after each test."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import trustme

from relaygate.transport.library import LibraryTransport
from relaygate.transport.options import TransportOptions
from tests.fakes.connect_proxy import ConnectProxy
from tests.fakes.raw_http import RawUpstream


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    return context


@pytest.fixture
async def upstreams() -> AsyncIterator[Callable[..., RawUpstream]]:
    started: list[RawUpstream] = []

    async def start(**kwargs: object) -> RawUpstream:
        upstream = await RawUpstream(**kwargs).start()  # type: ignore[arg-type]
        started.append(upstream)
        return upstream

    yield start  # type: ignore[misc]
    for upstream in started:
        await upstream.stop()


@pytest.fixture
async def proxies() -> AsyncIterator[Callable[..., ConnectProxy]]:
    started: list[ConnectProxy] = []

    async def start(**kwargs: object) -> ConnectProxy:
        proxy = await ConnectProxy(**kwargs).start()  # type: ignore[arg-type]
        started.append(proxy)
        return proxy

    yield start  # type: ignore[misc]
    for proxy in started:
        await proxy.stop()


@pytest.fixture
async def transports() -> AsyncIterator[Callable[..., LibraryTransport]]:
    made: list[LibraryTransport] = []

    def make(**kwargs: object) -> LibraryTransport:
        transport = LibraryTransport(TransportOptions(**kwargs))  # type: ignore[arg-type]
        made.append(transport)
        return transport

    yield make
    for transport in made:
        await transport.aclose()


@pytest.fixture
def no_env_proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    yield
