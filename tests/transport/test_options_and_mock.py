"""The transport's settings (config `proxy`, `tls`, `transport`, keys with `bucket` / `proxy`):
validated with messages that never repeat a proxy URL, read into TransportOptions, the choice
between the own client and a library one, the environment's proxy per URL; and the mock."""

from __future__ import annotations

import pytest

from relaygate.config.load import ConfigError, load_config
from relaygate.config.model import Config
from relaygate.transport import (
    ProxyError,
    RequestOptions,
    env_proxy_for,
    needs_library,
    options_for,
)
from relaygate.transport.mock import MockReply, MockTransport
from relaygate.transport.options import env_proxy


def provider(**extra: object) -> Config:
    return Config.model_validate({"providers": {"p": {"keys": ["k1"], **extra}}})


def test_every_key_form_still_loads_and_the_new_fields_are_kept() -> None:
    cfg = Config.model_validate(
        {
            "providers": {
                "p": {
                    "keys": ["a", {"key": "b", "label": "L", "bucket": "proj", "proxy": None}],
                },
                "q": {"keys": "c,d"},
            }
        }
    )
    keys = cfg.providers["p"].keys
    assert [(k.key, k.label, k.bucket, k.proxy) for k in keys] == [
        ("a", None, None, None),
        ("b", "L", "proj", None),
    ]
    assert [k.key for k in cfg.providers["q"].keys] == ["c", "d"]


def test_proxy_credentials_are_secrets_and_errors_never_repeat_the_url(tmp_path) -> None:
    cfg = provider(
        proxy="http://u:provider-pw@proxy:3128",
        keys=[{"key": "k1", "proxy": "socks5://ku:key-pw@10.0.0.7:1080"}],
    )
    secrets = cfg.secrets()
    assert {"provider-pw", "u:provider-pw", "key-pw", "ku:key-pw"} <= set(secrets)
    assert "key-pw" not in repr(cfg.providers["p"].keys[0])
    path = tmp_path / "bad.yaml"
    path.write_text("providers:\n  p:\n    keys: [k]\n    proxy: ftp://u:leaky-pw@h\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), environ={}, cwd=tmp_path)
    assert "providers.p.proxy" in str(caught.value) and "leaky-pw" not in str(caught.value)


def test_the_environments_proxy_credentials_are_secrets(monkeypatch) -> None:
    monkeypatch.setenv("https_proxy", "http://e:env-pw-1@proxy:1")
    assert "env-pw-1" in provider().secrets()


def test_kind_own_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ValueError, match="kind: own"):
        provider(proxy="http://proxy:1", transport={"kind": "own"})
    with pytest.raises(ValueError, match="client_key needs"):
        provider(tls={"client_key": "/k.pem"})
    with pytest.raises(ValueError):
        provider(transport={"max_connections_per_host": 0})


def test_options_and_which_transport(monkeypatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("all_proxy", raising=False)
    cfg = provider(transport={"keepalive_s": 5, "max_body_bytes": 4096})
    options = options_for("p", cfg.providers["p"])
    assert (options.name, options.keepalive_s, options.max_body_bytes) == ("p", 5, 4096)
    plain = dict(env_proxy=False, keys_have_proxies=False)
    assert needs_library(options, **plain) is False
    assert needs_library(options, env_proxy=False, keys_have_proxies=True) is True
    assert needs_library(options, env_proxy=True, keys_have_proxies=False) is True
    proxied = options_for("p", provider(proxy="http://u:pw@proxy:1").providers["p"])
    assert needs_library(proxied, **plain) is True and "pw" not in repr(proxied)
    lab = options_for("p", provider(tls={"verify": False}).providers["p"])
    assert needs_library(lab, **plain) is True
    forced = options_for("p", provider(transport={"kind": "library"}).providers["p"])
    assert needs_library(forced, **plain) is True


def test_the_environments_proxy_per_url(monkeypatch) -> None:
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    assert env_proxy("https://api.example.com/v1") is None
    monkeypatch.setenv("ALL_PROXY", "socks5://all:1")
    assert env_proxy("https://api.example.com/v1") == "socks5://all:1"
    monkeypatch.setenv("HTTPS_PROXY", "http://secure:1")
    assert env_proxy("https://api.example.com/v1") == "http://secure:1"
    assert env_proxy("http://api.example.com/v1") == "socks5://all:1"
    monkeypatch.setenv("no_proxy", ".example.com,10.0.0.5")
    assert env_proxy_for("https://api.example.com/v1") is False
    assert env_proxy_for("https://10.0.0.5:8443/v1") is False
    assert env_proxy_for("https://api.other.org/v1") is True


async def test_the_mock_answers_from_its_script_and_remembers() -> None:
    async def chunks():
        yield b"ab"
        yield b"c"

    mock = MockTransport(
        [MockReply(429, b'{"error": {}}'), MockReply(error=ProxyError("away"))],
        responder=lambda sent: MockReply(body=[b"x", sent.body or b""]),
    )
    first = await mock.request("POST", "https://u/1", {"a": "b"}, b"{}")
    assert first.status == 429 and await first.read(100) == b'{"error": {}}'
    with pytest.raises(ProxyError):
        await mock.request("POST", "https://u/2", {}, None, RequestOptions(proxy="http://p:1"))
    third = await mock.request("POST", "https://u/3", {}, chunks())
    assert [c async for c in third.iter_chunks()] == [b"x", b"abc"]
    third.close()
    assert [s.url for s in mock.sent] == ["https://u/1", "https://u/2", "https://u/3"]
    assert mock.sent[1].options.proxy == "http://p:1" and mock.responses[-1].closed
    await mock.aclose()
    with pytest.raises(RuntimeError):
        await mock.request("GET", "https://u/4", {}, None)
