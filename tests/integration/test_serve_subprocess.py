"""A newcomer's first run (SPEC §1, §10): `relaygate serve` as a real subprocess in an empty
directory with no provider key prints one client key once, serves `echo/...` to the openai SDK
and to plain HTTP, keeps the key (hashed) across restarts, honours PORT, answers `run-server`."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.fakes._server import free_port
from tests.integration._proc import clean_env

KEY = re.compile(r"rg-[A-Za-z0-9_-]{43}")


class Server:
    """`python -m relaygate <command>` with its output collected by reader threads."""

    def __init__(self, cwd: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relaygate", *args],
            cwd=cwd,
            env=env or clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._out: list[str] = []
        self._err: list[str] = []
        self._readers = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self._out), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self._err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _pump(stream, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    @property
    def stdout(self) -> str:
        return "".join(self._out)

    @property
    def stderr(self) -> str:
        return "".join(self._err)

    def wait_healthy(self, port: int, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"relaygate exited {self.proc.returncode}: {self.stderr}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"no /health within {timeout} s: {self.stderr}")

    def wait_for_output(self, pattern: re.Pattern[str], timeout: float = 5) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = pattern.search(self.stdout)
            if found:
                return found
            time.sleep(0.02)
        raise AssertionError(f"{pattern.pattern!r} not printed: {self.stdout!r}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for reader in self._readers:
            reader.join(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def serve(cwd: Path, *args: str, port: int | None = None, **env: str) -> Server:
    port_args = ("--port", str(port)) if port is not None else ()
    return Server(cwd, *(args or ("serve",)), *port_args, env=clean_env(**env))


def test_first_start_prints_one_key_and_serves_echo(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = serve(tmp_path, port=port)
    try:
        server.wait_healthy(port)
        key = server.wait_for_output(KEY).group(0)
        server.wait_for_output(re.compile(r"relaygate keys create[^\n]*\n\+-+\+"))
        assert server.stdout.count(key) == 1 and len(KEY.findall(server.stdout)) == 1
        assert server.stdout.splitlines()[0].startswith("+---")  # in a box

        with openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0) as client:
            answer = client.chat.completions.create(
                model="echo/hello", messages=[{"role": "user", "content": "hi from the sdk"}]
            )
            assert answer.choices[0].message.content == "hi from the sdk"
            assert answer.usage is not None and answer.usage.completion_tokens == 4
            chunks = list(
                client.chat.completions.create(
                    model="echo/hello",
                    messages=[{"role": "user", "content": "streamed word by word"}],
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
        words = [c.choices[0].delta.content for c in chunks if c.choices]
        assert [w for w in words if w] == ["streamed", " word", " by", " word"]
        assert chunks[-1].usage.completion_tokens == 4

        plain = httpx.post(
            base + "/v1/chat/completions",
            headers={"x-api-key": key},
            json={"model": "echo/hello", "messages": [{"role": "user", "content": "plain"}]},
        )
        assert plain.status_code == 200 and plain.json()["choices"][0]["message"]["content"] == (
            "plain"
        )
        assert plain.headers["x-relaygate-provider"] == "echo"
        refused = httpx.post(base + "/v1/chat/completions", json={"messages": [{"a": 1}]})
        assert refused.status_code == 401  # never unauthenticated

        health = httpx.get(base + "/health").json()
        assert health["status"] == "healthy" and "timestamp" in health
        for path in ("/docs", "/redoc", "/openapi.json", "/"):
            assert httpx.get(base + path).status_code == 200, path
        spec = httpx.get(base + "/openapi.json").json()
        assert "/v1/chat/completions" in spec["paths"]
        models = httpx.get(base + "/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert models.status_code == 200 and models.json()["object"] == "list"
    finally:
        server.stop()
    assert "Traceback" not in server.stderr
    db = (tmp_path / "relaygate-data" / "relaygate.db").read_bytes()
    assert key.encode() not in db  # stored hashed
    assert hashlib.sha256(key.encode()).hexdigest().encode() in db


def test_second_start_keeps_the_key_and_prints_none(tmp_path):
    port = free_port()
    first = serve(tmp_path, port=port)
    try:
        first.wait_healthy(port)
        key = first.wait_for_output(KEY).group(0)
    finally:
        first.stop()
    second = serve(tmp_path, port=port)
    try:
        second.wait_healthy(port)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "echo/again", "messages": [{"role": "user", "content": "same key"}]},
        )
        assert answer.status_code == 200
        assert answer.json()["choices"][0]["message"]["content"] == "same key"
    finally:
        second.stop()
    assert KEY.search(second.stdout) is None, second.stdout
    assert "created" not in second.stdout


def test_port_env_and_the_run_server_alias(tmp_path):
    port = free_port()
    server = serve(tmp_path, "run-server", PORT=str(port))  # no --port: PORT decides
    try:
        server.wait_healthy(port)
        key = server.wait_for_output(KEY).group(0)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "echo/x", "messages": [{"role": "user", "content": "via PORT"}]},
        )
        assert answer.status_code == 200
    finally:
        server.stop()


def run_call(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relaygate", "call", *args],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def test_relaygate_call_prints_the_echoed_text(tmp_path):
    port = free_port()
    server = serve(tmp_path, port=port)
    try:
        server.wait_healthy(port)
        key = server.wait_for_output(KEY).group(0)
        url = f"http://127.0.0.1:{port}"
        done = run_call("hello world", "-m", "echo/hi", "-k", key, "--server", url)
        assert done.returncode == 0, done.stderr
        assert done.stdout == "hello world\n"
        options = ["-s", "be brief", "-t", "0.2", "--max-tok", "2", "-k", key, "--server", url]
        capped = run_call("one two three four", "-m", "echo/hi", *options)
        assert capped.returncode == 0, capped.stderr
        assert capped.stdout == "one two\n"
    finally:
        server.stop()


def test_relaygate_call_failures_are_one_line(live_gateway):
    gw = live_gateway({})  # no provider: echo
    wrong = run_call("x", "-m", "echo/hi", "-k", "rg-wrong", "--server", gw.base)
    assert wrong.returncode != 0 and "401" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1 and wrong.stdout == ""
    unreachable = run_call("x", "-k", "rg-any", "--server", f"http://127.0.0.1:{free_port()}")
    assert unreachable.returncode != 0
    assert "cannot reach" in unreachable.stderr and "Traceback" not in unreachable.stderr


@pytest.mark.parametrize(
    "env",
    [
        {"DATABASE_URL": "sqlite:////proc/relaygate-nope/x.db"},
        {"PORT": "not-a-port"},
        {"RELAYGATE_CONFIG": "missing.yaml"},
        {"LOG_LEVEL": "verbose"},
    ],
    ids=["database", "port", "config-file", "log-level"],
)
def test_start_up_failures_are_one_line_without_traceback(tmp_path, env):
    done = subprocess.run(
        [sys.executable, "-m", "relaygate", "serve"],
        cwd=tmp_path,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_start_up_warnings_use_the_configured_log_format(tmp_path: Path) -> None:
    """`tls.verify: false` is warned about while the gateway is built, before the server's own
    logging was set: the warning still comes out in the configured (JSON) format."""
    import json

    port = free_port()
    (tmp_path / "relaygate.yaml").write_text(
        "providers:\n  lab:\n    type: openai\n    base_url: https://127.0.0.1:9/v1\n"
        "    keys: [sk-lab-key-0123456789]\n    models: [m]\n    tls: {verify: false}\n"
    )
    env = clean_env(RELAYGATE_LOG_JSON="1")
    server = Server(tmp_path, "serve", "--port", str(port), env=env)
    try:
        server.wait_healthy(port)
    finally:
        server.stop()
    lines = [line for line in server.stderr.splitlines() if "not verified" in line]
    assert len(lines) == 1, server.stderr
    record = json.loads(lines[0])
    assert record["level"] == "warning" and "lab" in record["msg"]
