"""The deployment files (SPEC §11): Dockerfile, .dockerignore, docker-compose.yml,
deploy/nginx.conf, render.yaml and Procfile are read and checked against each other and against
the gateway's own config loader; the Procfile's command, the Dockerfile's health probe and
`uvicorn relaygate.asgi:app` are run for real on loopback ports. No docker daemon is needed (an
image build is not tested); `nginx -t` runs only where an nginx binary exists."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from relaygate.config.load import load_config
from relaygate.config.model import Config
from tests.fakes._server import free_port
from tests.integration._proc import clean_env

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the virtualenv's scripts: relaygate, uvicorn
CLIENT_KEY = "rg-deploy-files-test-key-0123456789abcdef"
SECRET_NAME = re.compile(r"(_API_KEYS?(_\d+)?|SECRET|PASSWORD|TOKEN|CLIENT_API_KEYS_MAP)$")


def _yaml(name: str) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict), name
    return data


def _env(service: dict[str, Any]) -> dict[str, str | None]:
    """A compose `environment:` in either form (a map, or a list of NAME[=VALUE])."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        return {k: (v if sep else None) for k, sep, v in (e.partition("=") for e in raw)}
    return {k: (None if v is None else str(v)) for k, v in raw.items()}


def _interpolate(value: str) -> str:
    """Compose's `${VAR:-default}` with nothing set: the default."""
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    lines = [ln for ln in (ROOT / "Dockerfile").read_text().splitlines() if not ln.startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    found = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def _nginx_conf() -> str:
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


@pytest.fixture(scope="module")
def serve_help() -> str:
    done = subprocess.run(
        [str(BIN / "relaygate"), "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(COLUMNS="200"),
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


# --- docker-compose.yml -------------------------------------------------------------------------


def test_compose_runs_two_gateways_on_redis_and_postgres_behind_a_load_balancer():
    services = _yaml("docker-compose.yml")["services"]
    gateways = [name for name in services if name.startswith("gateway-")]
    assert gateways == ["gateway-1", "gateway-2"]
    for name in ("redis", "postgres"):
        check = services[name].get("healthcheck", {}).get("test")
        assert check, f"{name} has no healthcheck"
    assert "redis-cli" in " ".join(services["redis"]["healthcheck"]["test"])
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["postgres"]["volumes"], "postgres data must survive a restart"

    for name in gateways:
        gw = services[name]
        assert gw["build"] in (".", {"context": "."}), name
        env = _env(gw)
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        database = _interpolate(env["DATABASE_URL"] or "")
        assert re.fullmatch(r"postgresql://relaygate:[^@\s]+@postgres:5432/relaygate", database)
        assert env["RELAYGATE_CONFIG"] == "/app/relaygate.yaml"
        mounts = [m for m in gw["volumes"] if isinstance(m, dict)]
        config = [m for m in mounts if m["target"] == "/app/relaygate.yaml"]
        assert config and config[0]["source"] == "./relaygate.yaml" and config[0]["read_only"]
        assert gw["depends_on"] == {
            "redis": {"condition": "service_healthy"},
            "postgres": {"condition": "service_healthy"},
        }
        assert "ports" not in gw, "replicas are reached through the load balancer only"

    lb = services["lb"]
    assert lb["image"].startswith("nginx")
    assert any(str(p).endswith(":8000") for p in lb["ports"]), lb["ports"]
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in lb["volumes"]
    assert lb["depends_on"] == {g: {"condition": "service_healthy"} for g in gateways}


def test_compose_passes_secrets_through_and_its_environment_configures_the_gateway(tmp_path):
    services = _yaml("docker-compose.yml")["services"]
    env = _env(services["gateway-1"])
    assert env == _env(services["gateway-2"])
    secrets = [k for k in env if SECRET_NAME.search(k)]
    assert {"ADMIN_SECRET", "PROXY_API_KEY", "OPENAI_API_KEY", "GROQ_API_KEY"} <= set(secrets)
    for name in secrets:
        assert env[name] is None, f"{name} must come from the host, not the file"
    # One password, set once: the default (local use only) and $POSTGRES_PASSWORD reach both.
    password = services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert password.startswith("${POSTGRES_PASSWORD") and password in (env["DATABASE_URL"] or "")

    # The names are the loader's own: with a value for each, the gateway is configured by them.
    config = tmp_path / "relaygate.yaml"
    config.write_text("providers: {}\n")
    filled = {k: _interpolate(v) for k, v in env.items() if v is not None}
    filled.update({k: f"value-of-{k}-0123456789" for k in secrets})
    filled["RELAYGATE_CONFIG"] = str(config)
    filled["PROXY_API_KEY"] = CLIENT_KEY
    filled.pop("CLIENT_API_KEYS_MAP", None)
    cfg = load_config(environ=filled, cwd=tmp_path)
    assert cfg.redis_url == "redis://redis:6379/0"
    assert cfg.database_url.startswith("postgresql://relaygate:")
    assert cfg.admin_secret == filled["ADMIN_SECRET"]
    assert CLIENT_KEY in [c.key for c in cfg.clients]
    providers = {k[: -len("_API_KEY")].lower() for k in env if k.endswith("_API_KEY")}
    providers.discard("proxy")
    assert providers and providers <= set(cfg.providers), (providers, set(cfg.providers))
    assert cfg.server.port == 8000


# --- deploy/nginx.conf --------------------------------------------------------------------------


def test_nginx_balances_both_replicas_and_streams_unbuffered():
    conf = _nginx_conf()
    upstream = re.search(r"upstream\s+(\S+)\s*\{(.*?)\}", conf, re.S)
    assert upstream, "no upstream block"
    name, body = upstream.groups()
    servers = re.findall(r"^\s*server\s+(\S+?):(\d+)\b(.*);", body, re.M)
    services = _yaml("docker-compose.yml")["services"]
    assert sorted(h for h, _, _ in servers) == ["gateway-1", "gateway-2"]
    for host, port, params in servers:
        assert port == _env(services[host])["PORT"]
        assert "max_fails=" in params and "fail_timeout=" in params
    assert re.search(r"^\s*keepalive\s+\d+;", body, re.M)
    assert re.search(rf"proxy_pass\s+http://{re.escape(name)};", conf)
    for directive in (
        "proxy_buffering off;",
        "proxy_request_buffering off;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_set_header X-Real-IP $remote_addr;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
    ):
        assert re.search(r"\s+".join(map(re.escape, directive.split())), conf), directive
    assert re.search(r"^\s*listen\s+8000;", conf, re.M)
    body_limit = re.search(r"client_max_body_size\s+(\d+)m;", conf)
    assert body_limit and int(body_limit.group(1)) > 25  # audio uploads are up to 25 MiB
    read_timeout = re.search(r"proxy_read_timeout\s+(\d+)s;", conf)
    assert read_timeout and int(read_timeout.group(1)) >= 300
    retry = re.search(r"proxy_next_upstream\s+([^;]*);", conf)
    assert retry and retry.group(1).split() == ["error", "timeout"]  # never non_idempotent


def test_nginx_accepts_the_config(tmp_path):
    nginx = shutil.which("nginx")
    if nginx is None:
        pytest.skip("no nginx binary here")
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    text = re.sub(r"\bgateway-\d+(?=:8000)", "127.0.0.1", text).replace(" resolve ", " ")
    text = text.replace("pid /tmp/nginx.pid;", f"pid {tmp_path}/nginx.pid;")
    temp = f"client_body_temp_path {tmp_path}/body; proxy_temp_path {tmp_path}/proxy;"
    text = re.sub(r"^http \{", "http {\n    " + temp, text, count=1, flags=re.M)
    copy = tmp_path / "nginx.conf"
    copy.write_text(text)
    done = subprocess.run(
        [nginx, "-t", "-q", "-e", "stderr", "-p", str(tmp_path), "-c", str(copy)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr


# --- render.yaml --------------------------------------------------------------------------------


def test_render_blueprint_wires_redis_and_postgres_and_keeps_secrets_out(tmp_path):
    blueprint = _yaml("render.yaml")
    services = {s["name"]: s for s in blueprint["services"]}
    databases = {d["name"]: d for d in blueprint["databases"]}
    web = [s for s in services.values() if s["type"] == "web"]
    assert len(web) == 1
    (svc,) = web
    assert svc["healthCheckPath"] == "/health"
    if svc["runtime"] == "docker":
        assert (ROOT / svc.get("dockerfilePath", "Dockerfile")).is_file()
    else:
        assert svc["runtime"] == "python"
        assert shlex.split(svc["startCommand"])[:2] == ["relaygate", "serve"]

    env = {e["key"]: e for e in svc["envVars"]}
    redis = env["REDIS_URL"]["fromService"]
    assert redis["type"] in ("keyvalue", "redis") and redis["property"] == "connectionString"
    assert services[redis["name"]]["type"] == redis["type"]
    assert "ipAllowList" in services[redis["name"]]  # required by Render for Key Value
    database = env["DATABASE_URL"]["fromDatabase"]
    assert database["name"] in databases and database["property"] == "connectionString"
    for key, entry in env.items():
        if SECRET_NAME.search(key):
            assert "value" not in entry, f"{key} has a literal value"
            assert entry.get("sync") is False or entry.get("generateValue") is True, key

    # Render's wiring filled in, the names configure the gateway.
    filled = {k: f"value-of-{k}-0123456789" for k in env}
    filled.update(
        REDIS_URL="redis://red-example:6379",
        DATABASE_URL="postgresql://relaygate:pw@dpg-example/relaygate",
        PORT="10000",
    )
    cfg = load_config(environ=filled, cwd=tmp_path)
    assert cfg.redis_url == filled["REDIS_URL"] and cfg.database_url == filled["DATABASE_URL"]
    assert cfg.server.port == 10000
    assert cfg.admin_secret == filled.get("ADMIN_SECRET")


# --- Dockerfile and .dockerignore ---------------------------------------------------------------


def _exec_form(args: str) -> list[str]:
    argv = json.loads(args)
    assert isinstance(argv, list), f"not exec form: {args}"
    return argv


def test_dockerfile_builds_in_two_stages_and_runs_relaygate_unprivileged(serve_help):
    steps = _dockerfile()
    stages = [i for i, (word, _) in enumerate(steps) if word == "FROM"]
    assert len(stages) >= 2, "multi-stage: build the wheel, install it into a clean stage"
    final = steps[stages[-1] :]
    words = [word for word, _ in final]
    assert "ADD" not in [w for w, _ in steps], "COPY only: ADD fetches URLs and unpacks archives"

    users = [args for word, args in final if word == "USER"]
    assert users, "the final stage must not run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and user.isdigit(), "a fixed numeric uid"

    workdir = [args for word, args in final if word == "WORKDIR"][-1]
    assert workdir == "/app"
    data_dir = Config().database_url.removeprefix("sqlite:///").rsplit("/", 1)[0]
    volumes = " ".join(args for word, args in final if word == "VOLUME")
    assert f"{workdir}/{data_dir}" in volumes, "the default SQLite directory is a volume"
    assert re.search(r"\b8000\b", " ".join(a for w, a in final if w == "EXPOSE"))
    env = " ".join(a for w, a in final if w == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PYTHONUNBUFFERED=1" in env

    for word, args in steps:  # nothing secret baked in
        if word in ("ENV", "ARG"):
            for name in re.findall(r"(\w+)=", args):
                assert not SECRET_NAME.search(name), f"{word} {name}"
        if word == "COPY":
            sources = [a for a in args.split()[:-1] if not a.startswith("--")]
            for source in sources:
                assert not re.search(r"\.env|keys|relaygate\.yaml|relaygate-data", source), source

    assert "HEALTHCHECK" in words and "/health" in dict(final)["HEALTHCHECK"]
    assert "ENTRYPOINT" not in words
    cmd = _exec_form([a for w, a in final if w == "CMD"][-1])
    assert cmd[:2] == ["relaygate", "serve"]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    for flag in (a for a in cmd if a.startswith("--")):
        assert flag in serve_help, f"`relaygate serve` has no {flag}"


def test_dockerignore_keeps_state_and_secrets_out_and_the_build_inputs_in():
    patterns = [
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    for needed in (".venv", ".git", ".env", "relaygate-data", "keys", "tests", "bench"):
        assert needed in patterns, needed
    copied = [
        a
        for word, args in _dockerfile()
        if word == "COPY" and "--from" not in args
        for a in args.split()[:-1]
    ]
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), source
        excluded = [p for p in patterns if not p.startswith("!") and fnmatch(source, p)]
        assert not excluded, f"{source} is excluded by {excluded}"


# --- Procfile, the health probe and the ASGI entry point, run for real --------------------------


def _start(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """In its own process group, so that `_stop` also reaches a shell's or a supervisor's
    children; output goes to files (no pipe to fill)."""
    with (cwd / "stdout.log").open("w") as out, (cwd / "stderr.log").open("w") as err:
        return subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=out, stderr=err, text=True, start_new_session=True
        )


def _logs(cwd: Path) -> str:
    return (cwd / "stdout.log").read_text() + (cwd / "stderr.log").read_text()


def _wait_healthy(proc: subprocess.Popen[str], port: int, cwd: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode} before answering /health:\n{_logs(cwd)}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    pytest.fail(f"no /health within {timeout} s:\n{_logs(cwd)}")


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM to the whole group (the leader may be gone while its children are not)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def _healthcheck_argv() -> list[str]:
    args = [a for w, a in _dockerfile() if w == "HEALTHCHECK"][-1]
    argv = _exec_form(args[args.index("CMD") + len("CMD") :].strip())
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


def test_procfile_web_command_serves_on_port(tmp_path, serve_help):
    lines = [ln for ln in (ROOT / "Procfile").read_text().splitlines() if ln.strip()]
    procs = dict(ln.split(":", 1) for ln in lines)
    assert set(procs) == {"web"}
    argv = shlex.split(procs["web"])
    assert argv[:2] == ["relaygate", "serve"] and "$PORT" in argv
    for flag in (a for a in argv if a.startswith("--")):
        assert flag in serve_help, f"`relaygate serve` has no {flag}"

    port = free_port()
    env = clean_env(
        PORT=str(port),
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        DATABASE_URL=f"sqlite:///{tmp_path}/procfile.db",
    )
    proc = _start(["sh", "-c", procs["web"].strip()], tmp_path, env)
    try:
        _wait_healthy(proc, port, tmp_path)
    finally:
        _stop(proc)


def test_asgi_app_starts_from_the_environment_alone(tmp_path):
    config = tmp_path / "relaygate.yaml"
    config.write_text("providers:\n  echo: {}\n")
    work = tmp_path / "cwd"
    work.mkdir()
    port = free_port()
    env = clean_env(
        RELAYGATE_CONFIG=str(config),
        DATABASE_URL=f"sqlite:///{tmp_path}/asgi.db",
        PROXY_API_KEY=CLIENT_KEY,
    )
    argv = [str(BIN / "uvicorn"), "relaygate.asgi:app", "--host", "127.0.0.1"]
    proc = _start([*argv, "--port", str(port)], work, env)
    try:
        _wait_healthy(proc, port, work)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            headers={"Authorization": f"Bearer {CLIENT_KEY}"},
            json={"model": "echo/deploy", "messages": [{"role": "user", "content": "via asgi"}]},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"] == "via asgi"
        assert answer.headers["x-relaygate-provider"] == "echo"
        refused = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={})
        assert refused.status_code == 401

        # The image's HEALTHCHECK, as docker would run it, against this server and a closed port.
        probe = _healthcheck_argv()
        ok = subprocess.run(probe, env=clean_env(PORT=str(port)), capture_output=True, timeout=15)
        assert ok.returncode == 0, ok.stderr
        dead = subprocess.run(
            probe, env=clean_env(PORT=str(free_port())), capture_output=True, timeout=15
        )
        assert dead.returncode != 0
    finally:
        _stop(proc)
    assert "Traceback" not in _logs(work)


def _import_asgi(tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "relaygate.yaml"
    config.write_text("providers:\n  echo: {}\n")
    env = clean_env(
        RELAYGATE_CONFIG=str(config),
        DATABASE_URL=f"sqlite:///{tmp_path}/import.db",
        PROXY_API_KEY=CLIENT_KEY,
        **extra,
    )
    return subprocess.run(
        [sys.executable, "-c", "import relaygate.asgi"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_several_workers_without_redis_are_refused_with_a_plain_message(tmp_path):
    refused = _import_asgi(tmp_path, WEB_CONCURRENCY="2")
    assert refused.returncode == 2, refused.stderr
    message = refused.stderr.strip()
    assert "REDIS_URL" in message and "WEB_CONCURRENCY=2" in message
    assert "SPEC" not in message and "§" not in message and "Traceback" not in message
    assert len(message.splitlines()) == 1

    allowed = _import_asgi(tmp_path, WEB_CONCURRENCY="2", REDIS_URL="redis://127.0.0.1:1/0")
    assert allowed.returncode == 0, allowed.stderr
    one = _import_asgi(tmp_path, WEB_CONCURRENCY="1")
    assert one.returncode == 0, one.stderr


def test_uvicorn_with_several_workers_and_no_redis_stops_instead_of_respawning(tmp_path):
    config = tmp_path / "relaygate.yaml"
    config.write_text("providers:\n  echo: {}\n")
    env = clean_env(
        RELAYGATE_CONFIG=str(config),
        DATABASE_URL=f"sqlite:///{tmp_path}/workers.db",
        PROXY_API_KEY=CLIENT_KEY,
        WEB_CONCURRENCY="2",
    )
    argv = [str(BIN / "uvicorn"), "relaygate.asgi:app", "--host", "127.0.0.1"]
    argv += ["--timeout-worker-healthcheck", "2"]  # the supervisor looks sooner (default 5 s)
    proc = _start([*argv, "--port", str(free_port())], tmp_path, env)
    try:
        deadline = time.monotonic() + 8
        while proc.poll() is None and time.monotonic() < deadline:
            # Each of the 2 workers says it once; a third time means one was started again.
            if _logs(tmp_path).count("set REDIS_URL") > 2:
                pytest.fail(f"refusing workers are restarted:\n{_logs(tmp_path)[-2000:]}")
            time.sleep(0.1)
        assert proc.poll() is not None, "still running after 8 s"
    finally:
        _stop(proc)
    assert "REDIS_URL" in _logs(tmp_path)
