"""SPEC §11a proxies end to end, through the real gateway (uvicorn, the ASGI app) to raw fake
upstreams: HTTP(S)_PROXY / ALL_PROXY honoured and NO_PROXY respected, a provider's `proxy:`
with credentials carrying TLS to a local upstream (the test CA as `tls.ca_bundle`), two keys
leaving through two different proxies (each proxy carries only its key's requests), SOCKS5,
and proxies that refuse, are not there or hang: 502 / 504 with the error's code, and the key
is never blamed (/admin/keys shows it ready)."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest

from tests.fakes._server import free_port
from tests.fakes.connect_proxy import ConnectProxy
from tests.fakes.raw_http import RawUpstream
from tests.fakes.socks_proxy import SocksProxy
from tests.integration._transport import (
    Fakes,
    assert_keys_unblamed,
    chat_ok,
    config,
    error_of,
    post,
)

pytestmark = pytest.mark.usefixtures("no_env_proxy")
PROXY_PASSWORD = "pr0xy-Passw0rd-never-shown"


def test_a_provider_proxy_with_credentials_carries_tls_to_the_upstream(
    fakes: Fakes, live_gateway: Any, server_tls: Any, ca_file: str
) -> None:
    upstream = fakes.start(RawUpstream(chat_ok, tls=server_tls))
    proxy = fakes.start(ConnectProxy(user="relay", password=PROXY_PASSWORD))
    data = config(upstream.url("/v1"), ["sk-a"], proxy=proxy.url, tls={"ca_bundle": ca_file})
    gw = live_gateway(data)
    assert gw.gateway.transports.kinds["up"] == "library"
    for _ in range(3):
        answer = post(gw)
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"] == "hi"
        assert PROXY_PASSWORD not in answer.text
    assert proxy.asked[0] == ("CONNECT", f"localhost:{upstream.port}")
    token = base64.b64encode(f"relay:{PROXY_PASSWORD}".encode()).decode()
    assert proxy.auth_seen[0] == f"Basic {token}"
    assert len(upstream.requests) == 3
    assert {r.headers["authorization"] for r in upstream.requests} == {"Bearer sk-a"}
    assert {r.peer for r in upstream.requests} <= proxy.out_ports  # every one came through it


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "all_proxy"])
def test_the_environment_proxy_is_honoured_and_no_proxy_respected(
    fakes: Fakes, live_gateway: Any, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    upstream = fakes.start(RawUpstream(chat_ok))
    proxy = fakes.start(ConnectProxy())
    monkeypatch.setenv(variable, proxy.url)
    gw = live_gateway(config(upstream.url("/v1"), ["sk-a"]))
    assert gw.gateway.transports.kinds["up"] == "library"
    assert post(gw).status_code == 200
    assert proxy.asked and proxy.asked[0][1].startswith(f"http://127.0.0.1:{upstream.port}/v1/")
    assert {r.peer for r in upstream.requests} <= proxy.out_ports

    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    asked = len(proxy.asked)
    direct = live_gateway(config(upstream.url("/v1"), ["sk-a"]))
    assert direct.gateway.transports.kinds["up"] == "own"  # nothing asks for the library one
    assert post(direct).status_code == 200
    assert len(proxy.asked) == asked
    assert upstream.requests[-1].peer not in proxy.out_ports


def test_each_key_leaves_through_its_own_proxy(fakes: Fakes, live_gateway: Any) -> None:
    upstream = fakes.start(RawUpstream(chat_ok))
    one = fakes.start(ConnectProxy(user="k1", password=PROXY_PASSWORD))
    two = fakes.start(ConnectProxy())
    keys = [{"key": "sk-one", "proxy": one.url}, {"key": "sk-two", "proxy": two.url}]
    gw = live_gateway(config(upstream.url("/v1"), keys, key_strategy="round_robin"))
    for _ in range(6):
        assert post(gw).status_code == 200
    via: dict[str, set[str]] = {}
    for request in upstream.requests:
        exit_ = (
            "one"
            if request.peer in one.out_ports
            else "two"
            if request.peer in two.out_ports
            else "?"
        )
        via.setdefault(request.headers["authorization"], set()).add(exit_)
    assert via == {"Bearer sk-one": {"one"}, "Bearer sk-two": {"two"}}
    assert len(upstream.requests) == 6


def test_a_key_may_leave_through_socks5(fakes: Fakes, live_gateway: Any) -> None:
    upstream = fakes.start(RawUpstream(chat_ok))
    socks = fakes.start(SocksProxy(user="s", password=PROXY_PASSWORD))
    gw = live_gateway(config(upstream.url("/v1"), [{"key": "sk-a", "proxy": socks.url}]))
    for _ in range(2):
        assert post(gw).status_code == 200
    assert socks.asked[0] == ("127.0.0.1", upstream.port)
    assert len(upstream.requests) == 2


@pytest.mark.parametrize("mode", ["refuse", "absent", "wrong password", "wrong password, http"])
def test_a_proxy_that_refuses_is_a_502_and_the_key_is_not_blamed(
    fakes: Fakes, live_gateway: Any, server_tls: Any, ca_file: str, mode: str
) -> None:
    """A CONNECT refused (403, 407), no proxy listening, and a plain-http request's 407."""
    upstream = fakes.start(RawUpstream(chat_ok, tls=None if "http" in mode else server_tls))
    if mode == "absent":
        url = f"http://u:{PROXY_PASSWORD}@127.0.0.1:{free_port()}"
    elif mode == "refuse":
        url = fakes.start(ConnectProxy(mode="refuse")).url
    else:
        proxy = fakes.start(ConnectProxy(user="u", password="right"))
        url = proxy.url.replace("u:right@", f"u:{PROXY_PASSWORD}@")
    data = config(upstream.url("/v1"), ["sk-a", "sk-b"], proxy=url, tls={"ca_bundle": ca_file})
    gw = live_gateway(data)
    answer = post(gw)
    assert answer.status_code == 502, answer.text
    assert error_of(answer)["code"] == "upstream_proxy_error"
    assert PROXY_PASSWORD not in answer.text
    assert answer.headers["x-relaygate-attempts"] == "2"  # tried again: the key was not at fault
    assert upstream.requests == []
    assert_keys_unblamed(gw)


def test_a_proxy_that_hangs_is_a_504_within_the_connect_timeout(
    fakes: Fakes, live_gateway: Any, server_tls: Any, ca_file: str
) -> None:
    upstream = fakes.start(RawUpstream(chat_ok, tls=server_tls))
    proxy = fakes.start(ConnectProxy(mode="hang"))
    transport = {"connect_timeout_s": 0.5}
    tls = {"ca_bundle": ca_file}
    data = config(upstream.url("/v1"), ["sk-a"], proxy=proxy.url, transport=transport, tls=tls)
    data["retries"]["max_attempts"] = 1
    gw = live_gateway(data)
    started = time.monotonic()
    answer = post(gw)
    took = time.monotonic() - started
    assert answer.status_code == 504, answer.text
    assert error_of(answer)["code"] == "upstream_connect_timeout"
    assert 0.4 < took < 5
    assert proxy.asked  # it was asked, and said nothing
    assert_keys_unblamed(gw)
