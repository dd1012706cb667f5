"""Which transport serves each provider (transport/pool.py), chosen once at start: `auto` keeps
the own HTTP/1.1 client unless a proxy (the provider's, a key's, the environment's for its base
URL, NO_PROXY respected), a TLS option or HTTP/2 asks for the library one; `own` and `library`
force it. TLS files are read and `verify: false` warned about at start; `http2: true` without
h2 is one clear start-up error; a set used from a second loop builds anew, and closes."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from typing import Any

import pytest

from relaygate.config.model import ProviderConfig
from relaygate.errors import ConfigError
from relaygate.transport import pool
from relaygate.transport.library import LibraryTransport
from relaygate.transport.own import OwnTransport
from relaygate.transport.pool import Transports, choose

pytestmark = pytest.mark.usefixtures("no_env_proxy")
BASE = "https://api.example.com/v1"


def _kind(base: str = BASE, **provider: Any) -> str:
    return choose("p", base, ProviderConfig(type="openai", **provider))[0]


def test_auto_keeps_the_own_client_unless_something_asks_for_the_library(ca_file: str) -> None:
    assert _kind() == "own"
    assert _kind(keys=["sk-a"]) == "own"
    assert _kind(proxy="http://proxy:3128") == "library"
    assert _kind(keys=[{"key": "sk-a", "proxy": "socks5://p:1080"}, "sk-b"]) == "library"
    assert _kind(tls={"ca_bundle": ca_file}) == "library"
    assert _kind(tls={"verify": False}) == "library"
    assert _kind(transport={"http2": True}) == "library"
    assert _kind(transport={"kind": "library"}) == "library"
    assert _kind(transport={"kind": "own"}, tls={"ca_bundle": ca_file}) == "own"


def test_the_environment_proxy_of_the_base_url_and_no_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    assert _kind() == "library"
    assert _kind("http://api.example.com/v1") == "own"  # HTTPS_PROXY is for https URLs
    monkeypatch.setenv("no_proxy", ".example.com")
    assert _kind() == "own"
    monkeypatch.delenv("no_proxy")
    monkeypatch.setenv("ALL_PROXY", "socks5://proxy:1080")
    assert _kind("http://api.example.com/v1") == "library"
    assert _kind("echo:") == "own"  # not an http(s) upstream: nothing to proxy


def test_built_at_start_with_the_unverified_warning(caplog: pytest.LogCaptureFixture) -> None:
    specs = {
        "fast": (BASE, ProviderConfig(type="openai")),
        "lab": (BASE, ProviderConfig(type="openai", tls={"verify": False})),
    }
    with caplog.at_level(logging.WARNING, logger="relaygate.transport"):
        transports = Transports(specs)
    assert transports.kinds == {"fast": "own", "lab": "library"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "provider lab" in warnings[0] and "verify" in warnings[0]

    async def use() -> tuple[Any, Any]:
        return transports.get("fast"), transports.get("lab")

    fast, lab = asyncio.run(use())
    assert isinstance(fast, OwnTransport) and isinstance(lab, LibraryTransport)
    again = asyncio.run(use())  # another loop: a fresh set
    assert again[0] is not fast

    async def close() -> None:
        await transports.aclose()

    asyncio.run(close())
    assert again[0].closed and again[1].closed


def test_http2_without_h2_is_one_clear_start_up_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        pool.importlib.util, "find_spec", lambda name, *a: None if name == "h2" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"providers\.p\.transport\.http2: needs the h2 package"):
        _kind(transport={"http2": True})


def test_a_tls_file_that_cannot_be_read_is_a_start_up_error(tmp_path: Any) -> None:
    missing = str(tmp_path / "nowhere.pem")
    specs = {"lab": (BASE, ProviderConfig(type="openai", tls={"ca_bundle": missing}))}
    with pytest.raises(ConfigError, match=r"providers\.lab\.tls: the certificate files cannot"):
        Transports(specs)
