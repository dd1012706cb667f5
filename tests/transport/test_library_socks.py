"""SOCKS5 on the library transport (aiohttp-socks): a key's own SOCKS5 proxy with credentials
carries TLS to a local upstream; wrong credentials are a proxy error, never the key's."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from relaygate.transport import ProxyError, RequestOptions
from tests.fakes.socks_proxy import SocksProxy

pytestmark = pytest.mark.usefixtures("no_env_proxy")


@pytest.fixture
async def socks() -> AsyncIterator[SocksProxy]:
    proxy = await SocksProxy(user="sock", password="sock-pass").start()
    yield proxy
    await proxy.stop()


async def test_tls_through_a_socks5_proxy(upstreams, transports, socks, server_tls, ca_file):
    upstream = await upstreams(tls=server_tls)
    transport = transports(ca_bundle=ca_file)
    for _ in range(2):
        resp = await transport.request(
            "POST", upstream.url(), {}, b"{}", RequestOptions(proxy=socks.url)
        )
        assert resp.status == 200 and await resp.read(100) == b'{"ok": true}'
        resp.close()
    assert socks.asked == [("127.0.0.1", upstream.port)] or socks.asked == [
        ("localhost", upstream.port)
    ]
    assert upstream.opened == 1  # pooled behind the proxy too


async def test_wrong_socks_credentials_are_a_proxy_error(upstreams, transports, socks) -> None:
    upstream = await upstreams()
    wrong = socks.url.replace("sock-pass", "nope-pass")
    with pytest.raises(ProxyError) as caught:
        await transports().request("POST", upstream.url(), {}, b"{}", RequestOptions(proxy=wrong))
    assert "nope-pass" not in str(caught.value)
    assert upstream.requests == []
