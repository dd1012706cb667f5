"""SPEC §8: no answer, log line, metric or stored row ever contains an upstream key, a client key,
the admin secret or the Telegram bot token. Canaries are planted in every place a secret can come
from (YAML, environment), traffic goes through `relaygate serve` (a real subprocess, debug logs)
with every kind of failure, including upstreams that echo the key they were sent, and then every
answer (bodies and headers), every log line, the admin and status pages, the dashboard, the CLI
and a full SQL dump of the database are searched."""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest
import yaml

from relaygate.auth.clients import hash_key
from tests.fakes._server import free_port
from tests.fakes.audio_upstream import sine_wav
from tests.fakes.openai_upstream import FakeOpenAI, Reply
from tests.fakes.telegram import FakeTelegram
from tests.integration._proc import clean_env, stop

UP_YAML = "sk-CANARYupYaml-4f1c9a7e2b6d0835"
UP_ENV = "sk-CANARYupEnv-9e3b7d1a5c2f8046"
ROT_BAD = "sk-CANARYrotBad-2a8e6c4f0b9d1357"  # 401, the body echoes it
DEAD = "sk-CANARYdead-7c5a3e1f9d2b4680"  # 401 echoing it: the provider has no key left
FLAKY = "sk-CANARYflaky-1b9d7f5a3c0e2468"  # 500 echoing it
SLOW = "sk-CANARYslow-6d4b2f0e8a1c3579"  # never answers
PICKY = "sk-CANARYpicky-3f1d9b7c5e2a0864"  # 400 (the request's fault) echoing it
BROKE = "sk-CANARYbroke-8e6c4a2f0d1b3975"  # 429 insufficient_quota echoing it
STREAMS = "sk-CANARYstreams-5a3f1e9c7b0d2864"  # streams cut and failing mid-way
STATIC_CLIENT = "rg-CANARYstaticClient-0f2e4d6c8b1a3957"
ENV_CLIENT = "rg-CANARYenvClient-7b9d1f3e5a0c2468"
LIMITED_CLIENT = "rg-CANARYlimitedClient-3c5e7a9f1b0d2864"
WRONG_CLIENT = "rg-CANARYwrongClient-9a7c5e3b1d0f2468"  # presented, never valid
ADMIN = "CANARYadminSecret-1d3f5b7a9c0e2468"
BOT_TOKEN = "5550001234:CANARYbotToken-2e4c6a8f0b1d3579"
PROXIED = "sk-CANARYproxied-4d2b0f8e6c1a3957"  # a key with its own proxy and a bucket
PROXY_PASS = "CANARYproxyPass-6f4d2b0a8e1c3579"  # in the provider's `proxy:`
KEY_PROXY_PASS = "CANARYkeyProxyPass-0b8f6d4e2a1c3579"  # in the key's own `proxy:`
ENV_PROXY_PASS = "CANARYenvProxyPass-9c7a5e3f1d0b2468"  # in HTTPS_PROXY
DEAD_PROXY = f"127.0.0.1:{free_port()}"  # nothing listens: the proxy's failure path
CANARIES = {
    "upstream key from YAML": UP_YAML,
    "upstream key from the environment": UP_ENV,
    "upstream key echoed by a 401": ROT_BAD,
    "upstream key of a dead provider": DEAD,
    "upstream key echoed by a 500": FLAKY,
    "upstream key that times out": SLOW,
    "upstream key echoed by a 400": PICKY,
    "upstream key echoed by a quota 429": BROKE,
    "upstream key of failing streams": STREAMS,
    "static client key": STATIC_CLIENT,
    "client key from PROXY_API_KEY": ENV_CLIENT,
    "rate-limited client key": LIMITED_CLIENT,
    "a wrong client key": WRONG_CLIENT,
    "admin secret": ADMIN,
    "Telegram bot token": BOT_TOKEN,
    "upstream key with its own proxy": PROXIED,
    "a provider's proxy password": PROXY_PASS,
    "a key's proxy password": KEY_PROXY_PASS,
    "the environment's proxy password": ENV_PROXY_PASS,
}
MODEL = "gpt-4o-mini"


def echo(status_type, code, key, text):
    return {"error": {"message": text.format(key=key), "type": status_type, "code": code}}


def script(fake: FakeOpenAI) -> None:
    fake.script(
        ROT_BAD,
        Reply(
            status=401,
            error=echo(
                "invalid_request_error",
                "invalid_api_key",
                ROT_BAD,
                "Incorrect API key provided: {key}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
            ),
        ),
    )
    fake.script(
        DEAD,
        Reply(
            status=401,
            error=echo("invalid_request_error", "invalid_api_key", DEAD, "Bad key {key}"),
        ),
    )
    fake.script(
        FLAKY,
        Reply(
            status=500, error=echo("server_error", None, FLAKY, "upstream auth Bearer {key} broke")
        ),
    )
    fake.script(SLOW, Reply(hang=True))
    fake.script(
        PICKY,
        Reply(
            status=400,
            error=echo(
                "invalid_request_error",
                "context_length_exceeded",
                PICKY,
                "Key {key}: this model's maximum context length is 16385 tokens.",
            ),
        ),
    )
    fake.script(
        BROKE,
        Reply(
            status=429,
            error=echo(
                "insufficient_quota",
                "insufficient_quota",
                BROKE,
                "Key {key} exceeded its current quota, please check your plan and billing.",
            ),
        ),
    )
    fake.script(
        STREAMS,
        Reply(chunks=8, cut_after=3, chunk_delay_s=0.01),
        Reply(chunks=8, inband_error_after=2, chunk_delay_s=0.01),
        Reply(chunks=4),
    )


def config(tmp_path: Path, fake: FakeOpenAI, telegram: FakeTelegram) -> Path:
    def provider(*keys, **extra):
        return {
            "type": "openai",
            "base_url": fake.base_url,
            "keys": list(keys),
            "models": [MODEL],
            **extra,
        }

    data = {
        "providers": {
            "up": provider(UP_YAML),  # + UP_API_KEY from the environment
            "rot": provider(ROT_BAD, UP_YAML),
            "dead": provider(DEAD),
            "flaky": provider(FLAKY),
            "slow": provider(SLOW, timeout_s=0.3),
            "picky": provider(PICKY),
            "broke": provider(BROKE),
            "streams": provider(STREAMS),
            "proxied": {
                **provider(),
                "keys": [
                    {
                        "key": PROXIED,
                        "bucket": "canary-bucket",
                        "proxy": f"http://keyuser:{KEY_PROXY_PASS}@{DEAD_PROXY}",
                    }
                ],
                "proxy": f"http://relay:{PROXY_PASS}@{DEAD_PROXY}",
            },
        },
        "clients": [
            {"name": "static", "key": STATIC_CLIENT},
            {"name": "limited", "key": LIMITED_CLIENT, "rpm": 1},
        ],
        "retries": {"max_attempts": 2, "backoff_base_s": 0.01},
        "reports": {
            "daily_at": "08:00",
            "telegram_bot_token": BOT_TOKEN,
            "telegram_chat_id": "42",
            "telegram_base_url": telegram.base,
        },
    }
    path = tmp_path / "relaygate.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class Run:
    """`relaygate serve` as a subprocess, its output in files (no pipe to fill up)."""

    def __init__(self, tmp_path: Path, env: dict[str, str], cfg: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.out, self.err = tmp_path / "stdout.log", tmp_path / "stderr.log"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "relaygate",
                    "serve",
                    "--port",
                    str(self.port),
                    "--config",
                    str(cfg),
                ],
                cwd=tmp_path,
                env=env,
                stdout=out,
                stderr=err,
                text=True,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.err.read_text()
            try:
                if httpx.get(self.base + "/health", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise AssertionError("relaygate serve did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        stop(self.proc)


class Seen:
    """Every answer, as text: the request line, the status, every header and the body."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.client = httpx.Client(base_url=base, timeout=10)
        self.surfaces: list[tuple[str, str]] = []

    def __call__(self, method: str, path: str, **kw) -> httpx.Response:
        answer = self.client.request(method, path, **kw)
        headers = "\n".join(f"{k}: {v}" for k, v in answer.headers.multi_items())
        text = f"{answer.status_code}\n{headers}\n\n{answer.text}"
        self.surfaces.append((f"{method} {path} -> {answer.status_code}", text))
        return answer

    def chat(self, key: str, model: str, *, stream: bool = False, raw: bytes | None = None):
        content = raw or orjson.dumps(
            {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        )
        return self(
            "POST",
            "/v1/chat/completions",
            content=content,
            headers={"Authorization": f"Bearer {key}", "content-type": "application/json"},
        )


def drive(seen: Seen) -> str:
    """Traffic with every kind of failure, then every read a person can make. Returns the plain
    key issued through the admin API (the one answer allowed to show it)."""
    admin = {"admin-secret": ADMIN}
    assert seen.chat(STATIC_CLIENT, f"up/{MODEL}").status_code == 200
    assert seen.chat(ENV_CLIENT, f"up/{MODEL}", stream=True).status_code == 200
    for _ in range(2):  # one of them meets the echoing 401 first, the other key answers
        assert seen.chat(STATIC_CLIENT, f"rot/{MODEL}").status_code == 200
    assert seen.chat(STATIC_CLIENT, f"dead/{MODEL}").status_code == 503
    assert seen.chat(STATIC_CLIENT, f"flaky/{MODEL}").status_code == 502
    assert seen.chat(STATIC_CLIENT, f"slow/{MODEL}").status_code == 504
    assert seen.chat(STATIC_CLIENT, f"picky/{MODEL}").status_code == 400
    assert seen.chat(STATIC_CLIENT, f"broke/{MODEL}").status_code == 503
    for _ in range(3):  # cut off, failing mid-way, whole
        assert seen.chat(STATIC_CLIENT, f"streams/{MODEL}", stream=True).status_code == 200
    # the proxy is away: 502 (upstream_proxy_error), its credentials nowhere
    assert seen.chat(STATIC_CLIENT, f"proxied/{MODEL}").status_code == 502
    assert seen.chat(STATIC_CLIENT, "nowhere/unknown-model").status_code == 404
    assert (
        seen.chat(STATIC_CLIENT, "", raw=b'{"model": "up/gpt-4o-mini", "messages": [').status_code
        == 400
    )
    assert seen.chat(WRONG_CLIENT, f"up/{MODEL}").status_code == 401
    doors(seen)
    assert seen.chat(LIMITED_CLIENT, f"up/{MODEL}").status_code == 200
    assert seen.chat(LIMITED_CLIENT, f"up/{MODEL}").status_code == 429
    wrong_admin = {"admin-secret": WRONG_CLIENT}
    assert seen("GET", "/admin/usage", headers=wrong_admin).status_code == 403
    # an issued key: its plain form is returned once, by this answer only
    created = seen("POST", "/admin/clients", headers=admin, json={"name": "issued"})
    assert created.status_code == 201
    issued = created.json()["key"]
    seen.surfaces.pop()
    assert seen.chat(issued, f"up/{MODEL}").status_code == 200
    # every read
    for by in ("client", "provider", "model", "key", "day"):
        assert seen("GET", "/admin/usage", params={"by": by}, headers=admin).status_code == 200
    for path in ("/admin/failures", "/admin/keys", "/admin/clients", "/metrics", "/keys/status"):
        assert seen("GET", path, headers=admin).status_code == 200
    assert (
        seen(
            "GET", "/keys/status", headers={"Authorization": f"Bearer {STATIC_CLIENT}"}
        ).status_code
        == 200
    )
    seen("GET", "/current-key", headers=admin)
    seen("GET", "/admin/dashboard.json", headers=admin)
    for headers in ({}, admin):
        for path in ("/", "/status.json", "/health", "/v1/models", "/openapi.json", "/docs"):
            seen("GET", path, headers=headers)
        page = seen("GET", "/", headers=headers).text
        for asset in sorted(set(re.findall(r'(?:src|href)="(/[^"]+)"', page))):
            seen("GET", asset, headers=headers)
    seen("GET", "/v1/models", headers={"Authorization": f"Bearer {STATIC_CLIENT}"})
    return issued


def doors(seen: Seen) -> None:
    """Every front door (SPEC §7a), answered and streamed, failing, refused, with the key in
    each place its SDK sends it (Gemini's `?key=` in the URL included); embeddings on both
    doors, answered, failing with the key echoed, refused."""
    hi = [{"role": "user", "content": "hi"}]
    gemini = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    bearer = {"Authorization": f"Bearer {ENV_CLIENT}"}
    for key_headers in (bearer, {"x-api-key": ENV_CLIENT}, {"x-api-key": WRONG_CLIENT}):
        for model in (f"up/{MODEL}", f"flaky/{MODEL}", f"streams/{MODEL}"):
            for stream in (False, True):
                messages = {"model": model, "max_tokens": 32, "messages": hi, "stream": stream}
                seen("POST", "/v1/messages", json=messages, headers=key_headers)
                responses = {"model": model, "input": "hi", "stream": stream}
                seen("POST", "/v1/responses", json=responses, headers=key_headers)
        count = {"model": f"up/{MODEL}", "messages": hi}
        seen("POST", "/v1/messages/count_tokens", json=count, headers=key_headers)
    for model in (f"up/{MODEL}", f"flaky/{MODEL}"):
        base = f"/v1beta/models/{model}"
        seen("POST", base + ":generateContent", json=gemini, headers={"x-goog-api-key": ENV_CLIENT})
        seen("POST", base + f":streamGenerateContent?alt=sse&key={ENV_CLIENT}", json=gemini)
        seen("POST", base + f":generateContent?key={WRONG_CLIENT}", json=gemini)
        seen("POST", base + ":countTokens", json=gemini, headers=bearer)
    for model in (f"up/{MODEL}", f"flaky/{MODEL}", f"picky/{MODEL}", f"rot/{MODEL}"):
        embed = {"model": model, "input": ["hi", "there"]}
        for key_headers in (bearer, {"x-api-key": WRONG_CLIENT}):
            seen("POST", "/v1/embeddings", json=embed, headers=key_headers)
        seen("POST", "/embeddings", json={**embed, "encoding_format": "base64"}, headers=bearer)
        base = f"/v1beta/models/{model}"
        text = {"parts": [{"text": "hi"}]}
        batch = {"requests": [{"model": f"models/{model}", "content": text}]}
        seen("POST", base + ":embedContent", json={"content": text},
             headers={"x-goog-api-key": ENV_CLIENT})  # fmt: skip
        seen("POST", f"/v1/models/{model}:batchEmbedContents?key={ENV_CLIENT}", json=batch)
        seen("POST", base + f":batchEmbedContents?key={WRONG_CLIENT}", json=batch)
    seen("GET", "/v1beta/models", headers={"x-goog-api-key": ENV_CLIENT})
    seen("GET", f"/v1/models?key={ENV_CLIENT}")
    # audio and the seed routes: answered, failed over, failing, refused
    wav = {"file": ("a.wav", sine_wav(0.2), "audio/wav")}
    for key_headers in (bearer, {"x-api-key": WRONG_CLIENT}):
        for name in ("up", "rot", "flaky", "dead"):
            seen("POST", "/v1/audio/transcriptions", data={"model": f"{name}/whisper-1"},
                 files=wav, headers=key_headers)  # fmt: skip
        seen("POST", "/upload", files=wav, headers=key_headers)
        seen("POST", "/chat", data={"prompt": "hi"}, headers=key_headers)
        seen("POST", "/chat/json", json={"prompt": "hi", "model": f"rot/{MODEL}"},
             headers=key_headers)  # fmt: skip
        seen("POST", "/v1/generate", json={"prompt": "hi", "model": f"flaky/{MODEL}"},
             headers=key_headers)  # fmt: skip
        seen("POST", "/ask", json={"input": "hi", "model": f"dead/{MODEL}"}, headers=key_headers)
    seen("POST", "/v1/messages", json={"model": "nowhere/x", "max_tokens": 8, "messages": hi},
         headers=bearer)  # fmt: skip
    seen("POST", "/v1/responses", json={"model": "up/x", "previous_response_id": "resp_1"},
         headers=bearer)  # fmt: skip


def leaks(text: str, secrets: dict[str, str]) -> list[str]:
    return [name for name, secret in secrets.items() if secret in text]


@pytest.mark.parametrize("json_logs", [False, True], ids=["text-logs", "json-logs"])
def test_no_secret_anywhere(tmp_path, fake_openai, json_logs):
    telegram = FakeTelegram("a-different-token").start()  # the report is refused: 401
    try:
        script(fake_openai)
        cfg = config(tmp_path, fake_openai, telegram)
        db = tmp_path / "canary.db"
        env = clean_env(
            DATABASE_URL=f"sqlite:///{db}",
            UP_API_KEY=UP_ENV,
            PROXY_API_KEY=ENV_CLIENT,
            ADMIN_SECRET=ADMIN,
            HTTPS_PROXY=f"http://envuser:{ENV_PROXY_PASS}@{DEAD_PROXY}",  # upstreams are http
            LOG_LEVEL="debug",
            COLUMNS="200",
            **({"RELAYGATE_LOG_JSON": "1"} if json_logs else {}),
        )
        run = Run(tmp_path, env, cfg)
        try:
            seen = Seen(run.base)
            issued = drive(seen)
            seen.client.close()
        finally:
            run.stop()
        cli = []
        if not json_logs:  # the CLI, once: it reads the same config, environment and database
            for args in (
                ["config", "check"],
                ["keys", "list"],
                ["report", "--by", "key"],
                ["report", "--send"],
            ):
                done = subprocess.run(
                    [sys.executable, "-m", "relaygate", *args, "--config", str(cfg)],
                    cwd=tmp_path,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                cli.append((" ".join(args), f"{done.returncode}\n{done.stdout}\n{done.stderr}"))
            assert "report to telegram: failed (HTTP 401)" in cli[-1][1]
            assert len(telegram.received()) == 1
    finally:
        telegram.stop()

    secrets = {**CANARIES, "issued client key": issued}
    static_hashes = {
        name: hash_key(secret) for name, secret in CANARIES.items() if secret.startswith("rg-")
    }
    hashes = {**static_hashes, "issued key hash": hash_key(issued)}
    found = [(label, leaks(text, {**secrets, **hashes})) for label, text in seen.surfaces + cli]
    bad = [f"{label}: {', '.join(names)}" for label, names in found if names]
    assert not bad, "secrets found in:\n" + "\n".join(bad)
    assert any(label.startswith("GET / ->") for label, _ in seen.surfaces)

    # the logs: nothing secret, no traceback; with the JSON option, every line is one JSON object
    logs = run.out.read_text() + run.err.read_text()
    assert logs.strip(), "debug logging wrote nothing"
    assert leaks(logs, {**secrets, **hashes}) == []
    assert "Traceback" not in logs
    if json_logs:
        for line in logs.splitlines():
            if line.strip():
                record = orjson.loads(line)
                assert isinstance(record, dict) and {"ts", "level", "logger", "msg"} <= set(record)

    # the database: nothing secret; an issued key's hash only in the clients table
    with sqlite3.connect(db) as conn:
        dump = list(conn.iterdump())
    assert dump
    text = "\n".join(dump)
    assert leaks(text, {**secrets, **static_hashes}) == []
    holders = [line for line in dump if hash_key(issued) in line]
    assert len(holders) == 1 and holders[0].startswith('INSERT INTO "clients"')
    # the failure log in the database still says what went wrong
    assert any("context_length_exceeded" in line for line in dump)
