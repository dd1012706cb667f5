"""The library (SPEC §12): the same routing, pools and retries with no HTTP server."""

from __future__ import annotations

import pytest

from relaygate import Gateway
from relaygate.errors import NoAvailableKeys, UpstreamRejected
from tests.conftest import build_config, openai_provider
from tests.fakes.openai_upstream import Reply, errors

MSG = [{"role": "user", "content": "library call"}]


def make(tmp_path, fake, keys, **extra):
    data = {
        "providers": {"up": openai_provider(fake, keys, key_strategy="round_robin", **extra)},
        "retries": {"backoff_base_s": 0.01},
    }
    return Gateway(build_config(data, tmp_path / "lib.db", with_client=False))


async def test_chat_stream_and_key_states(tmp_path, fake_openai):
    async with make(tmp_path, fake_openai, ["sk-lib-a", "sk-lib-b"]) as gw:
        answer = await gw.chat(MSG, model="up/gpt-4o-mini")
        assert answer["object"] == "chat.completion"
        assert answer["choices"][0]["message"]["content"] == "Echo: library call"
        chunks = [c async for c in gw.stream(MSG, model="up/gpt-4o-mini")]
        text = "".join(
            c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
        )
        assert text == "Echo: library call"
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        states = gw.key_states()
        assert [s["requests_total"] for s in states] == [1, 1]
        assert all("sk-lib" not in repr(s) for s in states)


async def test_library_retries_and_raises_the_same_errors(tmp_path, fake_openai):
    fake_openai.script("sk-lib-a", Reply(status=500), Reply(status=401, error=errors.invalid_key()))
    fake_openai.script("sk-lib-b", Reply(status=400, error=errors.context_length()))
    async with make(tmp_path, fake_openai, ["sk-lib-a", "sk-lib-b"]) as gw:
        with pytest.raises(UpstreamRejected) as rejected:
            await gw.chat(MSG, model="up/gpt-4o-mini")  # a: 500, then b: the request's own 400
        assert rejected.value.code == "context_length_exceeded"
        fake_openai.script("sk-lib-b", Reply(status=429, error=errors.insufficient_quota()))
        with pytest.raises(NoAvailableKeys) as empty:
            await gw.chat(MSG, model="up/gpt-4o-mini")  # a: 401 -> invalid, b: quota -> exhausted
        assert empty.value.status == 503 and empty.value.retry_after_s >= 1
        assert {s["state"] for s in gw.key_states()} == {"invalid", "exhausted"}


async def test_from_env_reads_the_environment(tmp_path, fake_openai, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("GROQ_API_KEY", "OPENROUTER_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LIBUP_API_KEYS", "sk-env-1,sk-env-2")
    (tmp_path / "relaygate.yaml").write_text(
        f"providers:\n  libup:\n    type: openai\n    base_url: {fake_openai.base_url}\n"
        "    models: [gpt-4o-mini]\n"
    )
    async with Gateway.from_env() as gw:
        answer = await gw.chat(MSG, model="libup/gpt-4o-mini")
        assert answer["choices"][0]["message"]["content"] == "Echo: library call"
        assert len(gw.key_states()) == 2
    assert (tmp_path / "relaygate-data" / "relaygate.db").exists()
