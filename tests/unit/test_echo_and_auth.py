"""The built-in echo provider (SPEC §1) through the library API, and client keys (SPEC §5):
generation, header extraction, hashed lookup, `relaygate generate-key`."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import tempfile

import pytest

from relaygate import Gateway
from relaygate.auth.clients import ClientRegistry, generate_key, hash_key
from relaygate.config.model import Config
from relaygate.errors import ModelNotFound
from relaygate.http.headers import extract_key
from relaygate.keys.policy import apply
from relaygate.state.sqlite import open_sqlite
from tests.integration._proc import clean_env

URLSAFE = re.compile(r"[A-Za-z0-9_-]+")


@pytest.fixture
async def echo_gw():
    async with Gateway(Config(), persist=False) as gw:  # no provider configured: echo answers
        yield gw


# --- echo -------------------------------------------------------------------------------------


async def test_echo_answers_the_last_user_message_with_usage(echo_gw):
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "the second question here"},
    ]
    out = await echo_gw.chat(messages, model="echo/anything")
    assert out["object"] == "chat.completion"
    assert out["choices"][0]["message"] == {
        "role": "assistant",
        "content": "the second question here",
    }
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"] == {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}


async def test_echo_streams_word_by_word(echo_gw):
    chunks = [
        c
        async for c in echo_gw.stream(
            [{"role": "user", "content": "one  two three"}],
            model="echo/x",
            stream_options={"include_usage": True},
        )
    ]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    words = [c["choices"][0]["delta"].get("content") for c in chunks[1:] if c["choices"]]
    assert [w for w in words if w] == ["one", " two", " three"]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1


async def test_echo_stream_without_include_usage_has_no_usage_chunk(echo_gw):
    chunks = [c async for c in echo_gw.stream([{"role": "user", "content": "a b"}], model="echo/x")]
    assert all(c["choices"] for c in chunks)
    assert all("usage" not in c for c in chunks)


async def test_echo_text_parts_and_max_tokens(echo_gw):
    content = [
        {"type": "text", "text": "look at"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": "this picture please"},
    ]
    out = await echo_gw.chat([{"role": "user", "content": content}], model="echo/x")
    assert out["choices"][0]["message"]["content"] == "look at this picture please"
    capped = await echo_gw.chat(
        [{"role": "user", "content": "a b c d e"}], model="echo/x", max_tokens=2
    )
    assert capped["choices"][0]["message"]["content"] == "a b"
    assert capped["choices"][0]["finish_reason"] == "length"
    assert capped["usage"]["completion_tokens"] == 2


async def test_echo_models_are_listed(echo_gw):
    assert "echo/echo" in echo_gw.models()


OTHER = {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "keys": ["sk-x"], "models": ["m"]}


async def test_echo_is_off_once_another_provider_is_configured():
    async with Gateway(Config.model_validate({"providers": {"up": OTHER}}), persist=False) as gw:
        with pytest.raises(ModelNotFound):
            await gw.chat([{"role": "user", "content": "hi"}], model="echo/x")


async def test_echo_on_request_next_to_other_providers():
    config = Config.model_validate({"providers": {"up": OTHER, "echo": {}}})
    async with Gateway(config, persist=False) as gw:
        out = await gw.chat([{"role": "user", "content": "still here"}], model="echo/x")
    assert out["choices"][0]["message"]["content"] == "still here"


# --- keys -------------------------------------------------------------------------------------


def test_generate_key_default_shape():
    keys = {generate_key() for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        assert key.startswith("rg-") and len(key) == 3 + 43
        assert URLSAFE.fullmatch(key[3:])


@pytest.mark.parametrize(("prefix", "length"), [("fwd_", 20), ("", 16), ("sk-relay-", 200)])
def test_generate_key_prefix_and_length(prefix, length):
    key = generate_key(prefix, length)
    assert key.startswith(prefix) and len(key) == len(prefix) + length
    assert URLSAFE.fullmatch(key[len(prefix) :])


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """In a directory of its own: generate-key appends to the keys file under the cwd."""
    with tempfile.TemporaryDirectory() as cwd:
        return subprocess.run(
            [sys.executable, "-m", "relaygate", *args],
            cwd=cwd,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )


def test_generate_key_command():
    done = _cli("generate-key", "--length", "20")
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert done.stdout == key + "\n"
    assert key.startswith("rg-") and len(key) == 23 and URLSAFE.fullmatch(key[3:])
    custom = _cli("generate-key", "--prefix", "fwd_", "--length", "32").stdout.strip()
    assert custom.startswith("fwd_") and len(custom) == 36
    default = _cli("generate-key").stdout.strip()
    assert len(default) == 46


def test_generate_key_command_refuses_short_keys():
    done = _cli("generate-key", "--length", "8")
    assert done.returncode != 0
    assert "--length" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"authorization": "Bearer rg-abc"}, "rg-abc"),
        ({"authorization": "bearer   rg-abc  "}, "rg-abc"),
        ({"x-api-key": " rg-xyz "}, "rg-xyz"),
        ({"authorization": "Basic dXNlcjpwYXNz", "x-api-key": "rg-xyz"}, "rg-xyz"),
        ({"authorization": "Bearer rg-abc", "x-api-key": "rg-xyz"}, "rg-abc"),
        ({"authorization": "Bearer "}, None),
        ({"authorization": "rg-abc"}, None),
        ({"x-api-key": "   "}, None),
        ({}, None),
    ],
)
def test_extract_key(headers, expected):
    assert extract_key(headers) == expected


def test_static_keys_authenticate_by_hash():
    config = Config.model_validate(
        {"clients": [{"name": "app1", "key": "rg-static-key-0001", "rpm": 5}]}
    )
    registry = ClientRegistry(config, None)
    found = registry.authenticate("rg-static-key-0001")
    assert found is not None and found.name == "app1" and found.rpm == 5
    assert found.key_hash == hash_key("rg-static-key-0001")
    for wrong in ("rg-static-key-0002", "rg-static-key-000", "", None, "RG-STATIC-KEY-0001"):
        assert registry.authenticate(wrong) is None
    assert "rg-static-key-0001" not in repr(found)


async def test_issued_keys_follow_the_auth_config_and_are_stored_hashed(tmp_path):
    config = Config.model_validate({"auth": {"key_prefix": "fwd_", "key_length": 24}})
    db = tmp_path / "keys.db"
    store = open_sqlite(f"sqlite:///{db}", apply)
    try:
        registry = ClientRegistry(config, store.clients)
        key, public = await registry.issue("app2", rpm=10)
        assert key.startswith("fwd_") and len(key) == 28 and URLSAFE.fullmatch(key[4:])
        assert "key_hash" not in public and key not in str(public)
        found = registry.authenticate(key)
        assert found is not None and found.name == "app2" and found.source == "issued"
        assert registry.authenticate(key + "x") is None
    finally:
        await store.aclose()
    with sqlite3.connect(db) as conn:
        dump = "\n".join(conn.iterdump())
    assert key not in dump and hash_key(key) in dump
