"""Issue 15, the CLI habits of the earlier gateways' users, with the real `relaygate` command and
a real server: generate-key into the watched keys file, `call` with `-t/--temp` and a key from
`.env`, whole ids at any width, revoke by name, imported SHA-256 keys, `upstream check` with no
model (with and without Redis), `config check` that never cuts, and the `PORT` variable."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from relaygate.keys.pool import key_id
from tests.conftest import CLIENT_KEY
from tests.fakes._server import free_port
from tests.fakes.openai_upstream import FakeOpenAI
from tests.integration._proc import clean_env, start_server, stop
from tests.integration._redis import PrivateRedis

ANSI = re.compile(r"\x1b\[[0-9;]*m")
MSG = [{"role": "user", "content": "hi there"}]


def cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relaygate", *args],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def eventually(check: Callable[[], bool], seconds: float = 1.5) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def chat_status(port: int, key: str, model: str = "echo/hi") -> int:
    answer = httpx.post(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": model, "messages": MSG},
        timeout=10,
    )
    return answer.status_code


@pytest.fixture
def servers() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        stop(proc)


def test_generate_key_appends_to_the_keys_file_and_a_running_server_takes_it(tmp_path, servers):
    port = free_port()
    servers.append(start_server(tmp_path, port))
    made = cli(tmp_path, "generate-key")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("rg-") and len(key) == 46
    path = tmp_path / "keys" / "forwarder_api_keys.txt"
    assert path.read_text().splitlines() == [key]
    assert eventually(lambda: chat_status(port, key) == 200)
    second = cli(tmp_path, "generate-key", "--length", "20", "--prefix", "fwd_").stdout.strip()
    assert path.read_text().splitlines() == [key, second]
    assert eventually(lambda: chat_status(port, second) == 200)
    path.write_text(f"# kept: only the second\n{second}\n")
    assert eventually(lambda: chat_status(port, key) == 401)
    assert chat_status(port, second) == 200


def test_call_takes_temp_and_its_key_from_dotenv_and_serve_honours_port(tmp_path, servers):
    fake = FakeOpenAI().start()
    try:
        port = free_port()
        env = clean_env(
            PORT=str(port),
            OPENAI_API_KEY="sk-upstream-0123456789",
            OPENAI_BASE_URL=fake.base_url,
            PROXY_API_KEY=CLIENT_KEY,
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "relaygate", "serve"],  # no --port: PORT decides
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        servers.append(proc)
        assert eventually(lambda: _healthy(port), seconds=20), "the server did not start on PORT"
        client_dir = tmp_path / "client"
        client_dir.mkdir()
        (client_dir / ".env").write_text(f"FORWARDER_KEY={CLIENT_KEY}\nPORT={port}\n")
        done = cli(client_dir, "call", "hi there", "-m", "openai/gpt-4o-mini", "--temp", "0.3")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "Echo: hi there"
        assert fake.calls()[-1].json["temperature"] == 0.3
        (client_dir / ".env").write_text(f"PORT={port}\n")
        short = cli(
            client_dir, "call", "again", "-m", "openai/gpt-4o-mini", "-t", "0.7", "-k", CLIENT_KEY
        )
        assert short.returncode == 0 and fake.calls()[-1].json["temperature"] == 0.7
        by_env = cli(client_dir, "call", "x", "-m", "openai/gpt-4o-mini", PROXY_API_KEY="wrong-key")
        assert by_env.returncode == 1 and "401" in by_env.stderr
    finally:
        fake.stop()


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def test_keys_list_shows_whole_ids_at_any_width_and_revoke_takes_a_name(tmp_path):
    names = ["alpha-client-with-a-long-name", "twin", "twin"]
    for name in names:
        made = cli(tmp_path, "keys", "create", "--name", name, "--models", "echo/a,echo/b")
        assert made.returncode == 0, made.stderr
    piped = cli(tmp_path, "keys", "list", COLUMNS="40")
    rows = [line.split("\t") for line in piped.stdout.splitlines() if "\t" in line]
    assert rows[0][:2] == ["id", "name"] and [r[1] for r in rows[1:]] == names
    ids = [r[0] for r in rows[1:]]
    assert all(re.fullmatch(r"[0-9a-f]{12}", i) for i in ids)
    narrow = ANSI.sub("", cli(tmp_path, "keys", "list", COLUMNS="40", FORCE_COLOR="1").stdout)
    assert "…" not in narrow and all(f"id: {i}" in narrow for i in ids)
    wide = ANSI.sub("", cli(tmp_path, "keys", "list", COLUMNS="250", FORCE_COLOR="1").stdout)
    assert "…" not in wide and all(i in wide for i in ids) and names[0] in wide
    twin = cli(tmp_path, "keys", "revoke", "twin")
    assert twin.returncode == 1 and "2 active clients are named 'twin'" in twin.stderr
    assert "revoke one by its id" in twin.stderr and "Traceback" not in twin.stderr
    assert cli(tmp_path, "keys", "revoke", names[0]).stdout.strip() == f"revoked {ids[0]}"
    assert cli(tmp_path, "keys", "revoke", ids[1]).returncode == 0
    assert cli(tmp_path, "keys", "revoke", "twin").stdout.strip() == f"revoked {ids[2]}"
    gone = cli(tmp_path, "keys", "revoke", "nobody")
    assert gone.returncode == 1 and "no active client with id or name 'nobody'" in gone.stderr


def test_a_key_known_only_by_its_sha256_is_valid(tmp_path, servers, live_gateway):
    old_key = "seed-003-client-key-kept-as-a-hash-only"
    digest = hashlib.sha256(old_key.encode()).hexdigest()
    gw = live_gateway({"clients": [{"name": "migrated", "key_sha256": digest.upper()}]})
    assert chat_status(int(gw.base.rsplit(":", 1)[1]), old_key) == 200
    assert chat_status(int(gw.base.rsplit(":", 1)[1]), old_key + "x") == 401
    port = free_port()
    servers.append(start_server(tmp_path, port))
    imported = cli(tmp_path, "keys", "import", "--name", "old-app", "--sha256", digest)
    assert imported.returncode == 0, imported.stderr
    assert "imported client old-app" in imported.stdout
    assert eventually(lambda: chat_status(port, old_key) == 200)
    again = cli(tmp_path, "keys", "import", "--name", "dup", "--sha256", digest)
    assert again.returncode == 1 and "exists already" in again.stderr
    bad = cli(tmp_path, "keys", "import", "--name", "x", "--sha256", "abc")
    assert bad.returncode == 1 and "64 hexadecimal digits" in bad.stderr
    listed = cli(tmp_path, "keys", "list").stdout
    assert digest not in listed and "sha256:" + digest[:8] in listed


BAD, GOOD = "sk-check-bad-0123456789", "sk-check-good-0123456789"


def _check_config(tmp_path: Path, fake: FakeOpenAI, **extra: str) -> Path:
    config = {
        "providers": {"up": {"type": "openai", "base_url": fake.base_url, "keys": [BAD, GOOD]}},
        "clients": [{"name": "tests", "key": CLIENT_KEY}],
        "routing": {"discover_every_s": 0},
        **extra,
    }
    path = tmp_path / "relaygate.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _states(port: int) -> dict[str, str]:
    answer = httpx.get(
        f"http://127.0.0.1:{port}/keys/status",
        headers={"Authorization": f"Bearer {CLIENT_KEY}"},
        timeout=5,
    )
    return {s["key_id"]: s["state"] for s in answer.json()["keys"]}


@pytest.mark.parametrize("with_redis", [False, True])
def test_upstream_check_lists_models_and_a_running_server_sees_it(tmp_path, servers, with_redis):
    fake = FakeOpenAI().start()
    redis = PrivateRedis().start() if with_redis else None
    try:
        extra = {"redis_url": redis.url} if redis is not None else {}
        _check_config(tmp_path, fake, **extra)
        port = free_port()
        servers.append(start_server(tmp_path, port))
        assert set(_states(port).values()) == {"ready"}
        fake.bad_keys.add(BAD)
        done = cli(tmp_path, "upstream", "check", COLUMNS="40")
        assert done.returncode == 1, done.stdout + done.stderr
        assert "1 of 2 keys answered ok" in done.stdout and "listed 1 models" in done.stdout
        assert set(fake.listings) == {BAD, GOOD} and fake.calls() == []  # no chat was sent
        bad_id = key_id("up", BAD)
        assert eventually(lambda: _states(port)[bad_id] == "invalid")
        assert _states(port)[key_id("up", GOOD)] == "ready"
        fake.bad_keys.clear()
        again = cli(tmp_path, "upstream", "check")
        assert again.returncode == 0 and "2 of 2 keys answered ok" in again.stdout
        assert eventually(lambda: _states(port)[bad_id] == "ready")
    finally:
        fake.stop()
        if redis is not None:
            redis.stop()


def test_config_check_never_cuts_a_value(tmp_path):
    long_url = "http://127.0.0.1:9/a/very/long/path/that/would/not/fit/in/forty/columns/v1"
    config = {
        "providers": {
            "local": {"type": "openai", "base_url": long_url, "keys": ["sk-x-0123456789"]}
        },
        "routing": {"aliases": {"a-rather-long-alias-name": "local/some-long-model-name-here"}},
    }
    (tmp_path / "relaygate.yaml").write_text(yaml.safe_dump(config))
    for env in ({"COLUMNS": "40", "FORCE_COLOR": "1"}, {"COLUMNS": "40"}):
        out = ANSI.sub("", cli(tmp_path, "config", "check", **env).stdout)
        assert "…" not in out and "..." not in out
        assert long_url in out and "local/some-long-model-name-here" in out
        assert key_id("local", "sk-x-0123456789") in out and "sk-x-0123456789" not in out
