"""The library transport alone (SPEC §11a): TLS to a local upstream through a real CONNECT proxy
with Basic credentials, the environment's proxies (both letter cases) with NO_PROXY honoured,
a key's own proxy per request, proxies that refuse, are away or hang (clear errors, bounded by
the connect timeout, none blaming the key), and the TLS options: a CA bundle, verify: false
(warned once), a client certificate."""

from __future__ import annotations

import logging
import ssl
import time

import pytest
import trustme

from relaygate.transport import ConnectTimeout, ProxyError, RequestOptions, TransportError
from tests.fakes._server import free_port

pytestmark = pytest.mark.usefixtures("no_env_proxy")
BODY = b'{"messages": []}'


async def call(transport, url, **options):
    resp = await transport.request(
        "POST", url, {"Content-Type": "application/json"}, BODY, RequestOptions(**options)
    )
    try:
        return resp.status, await resp.read(1 << 20)
    finally:
        resp.close()


async def test_tls_through_a_connect_proxy_with_credentials(
    upstreams, proxies, transports, server_tls, ca_file
) -> None:
    upstream = await upstreams(tls=server_tls)
    proxy = await proxies(user="relay", password="s3cret-proxy-pass")
    transport = transports(proxy=proxy.url, ca_bundle=ca_file)
    for _ in range(3):
        assert await call(transport, upstream.url()) == (200, b'{"ok": true}')
    assert proxy.asked == [("CONNECT", f"localhost:{upstream.port}")]  # one tunnel, kept alive
    assert proxy.auth_seen[0] is not None and proxy.auth_seen[0].startswith("Basic ")
    assert [r.body for r in upstream.requests] == [BODY] * 3
    assert all("proxy-authorization" not in r.headers for r in upstream.requests)


async def test_wrong_proxy_credentials_are_a_proxy_error_that_names_no_secret(
    upstreams, proxies, transports, server_tls, ca_file
) -> None:
    upstream = await upstreams(tls=server_tls)
    proxy = await proxies(user="relay", password="right-pass")
    wrong = proxy.url.replace("right-pass", "wrong-pass-123")
    transport = transports(proxy=wrong, ca_bundle=ca_file)
    with pytest.raises(ProxyError) as caught:
        await call(transport, upstream.url())
    assert "407" in str(caught.value) and "wrong-pass-123" not in str(caught.value)
    assert caught.value.status == 502 and isinstance(caught.value, TransportError)
    assert upstream.requests == []


async def test_a_refusing_proxy_and_one_that_is_away(
    upstreams, proxies, transports, server_tls, ca_file
) -> None:
    upstream = await upstreams(tls=server_tls)
    refusing = await proxies(mode="refuse")
    with pytest.raises(ProxyError, match="403"):
        await call(transports(proxy=refusing.url, ca_bundle=ca_file), upstream.url())
    away = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ProxyError, match="could not connect to the proxy"):
        await call(transports(proxy=away, ca_bundle=ca_file), upstream.url())
    assert upstream.requests == []


async def test_a_hanging_proxy_is_bounded_by_the_connect_timeout(
    upstreams, proxies, transports, server_tls, ca_file
) -> None:
    upstream = await upstreams(tls=server_tls)
    hanging = await proxies(mode="hang")
    transport = transports(proxy=hanging.url, ca_bundle=ca_file, connect_timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(ConnectTimeout) as caught:
        await call(transport, upstream.url())
    assert time.monotonic() - started < 5
    assert caught.value.status == 504
    assert hanging.asked == [("CONNECT", f"localhost:{upstream.port}")]


@pytest.mark.parametrize("name", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
async def test_the_environments_proxy_and_no_proxy(
    upstreams, proxies, transports, monkeypatch, name
) -> None:
    upstream = await upstreams()
    proxy = await proxies(user="env", password="env-pass")
    monkeypatch.setenv(name, proxy.url)
    monkeypatch.setenv("NO_PROXY", "example.invalid")
    monkeypatch.setenv("no_proxy", "example.invalid")
    transport = transports()
    assert await call(transport, upstream.url("/a")) == (200, b'{"ok": true}')
    assert proxy.asked == [("POST", upstream.url("/a"))]  # absolute form through the proxy
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    monkeypatch.setenv("no_proxy", "localhost,127.0.0.1")
    assert await call(transport, upstream.url("/b")) == (200, b'{"ok": true}')
    assert len(proxy.asked) == 1  # NO_PROXY: straight to the upstream
    assert [r.target for r in upstream.requests] == [upstream.url("/a"), "/b"]


async def test_a_keys_own_proxy_per_request(upstreams, proxies, transports) -> None:
    upstream = await upstreams()
    provider_proxy = await proxies()
    key_proxy = await proxies(user="key-b", password="kb-pass")
    transport = transports(proxy=provider_proxy.url)
    await call(transport, upstream.url("/p"))
    await call(transport, upstream.url("/k"), proxy=key_proxy.url)
    assert [t for _, t in provider_proxy.asked] == [upstream.url("/p")]
    assert [t for _, t in key_proxy.asked] == [upstream.url("/k")]


async def test_tls_verify_false_is_warned_once_and_connects(
    upstreams, transports, server_tls, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="relaygate.transport")
    upstream = await upstreams(tls=server_tls)
    with pytest.raises(ConnectionError, match="certificate"):  # the CA is not trusted
        await call(transports(), upstream.url())
    lab = transports(name="lab", verify=False)
    for _ in range(2):
        assert (await call(lab, upstream.url()))[0] == 200
    warned = [r for r in caplog.records if "not verified" in r.getMessage()]
    assert len(warned) == 1 and "lab" in warned[0].getMessage()


async def test_a_client_certificate(upstreams, transports, ca, ca_file, tmp_path) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    context.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(context)
    upstream = await upstreams(tls=context)
    with pytest.raises(OSError):  # no certificate: the upstream ends the handshake
        await call(transports(ca_bundle=ca_file, connect_timeout_s=5), upstream.url())
    client: trustme.LeafCert = ca.issue_cert("relaygate-client")
    cert = tmp_path / "client.pem"
    client.private_key_and_cert_chain_pem.write_to_path(str(cert))
    transport = transports(ca_bundle=ca_file, client_cert=str(cert))
    assert (await call(transport, upstream.url()))[0] == 200
