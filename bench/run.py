"""The benchmark (issues 7, 12, 13, 14 and 16): `make bench`, or `BENCH_QUICK=1 make bench` for a
short smoke run.

Every target runs pinned to core 0 (`taskset -c 0`); the load generators, the upstream mocks that
the relays forward to and the private redis-server run on core 1. Targets, all alive during one
run and measured in interleaved rounds so drift hits each alike:
  direct            - a second mock upstream, hit directly (the mock's own ceiling and baseline);
  relaygate         - `relaygate serve` with client auth, a 3-key round-robin pool, client rate
                      limits and the ledger (see TODO below); state in memory, the ledger in
                      SQLite; no proxy, no TLS option: `transport: auto` keeps the own client;
  relaygate-redis   - the same config and features, served with REDIS_URL pointing at a private
                      `redis-server --save '' --appendonly no` started by the bench (never the
                      system one): admissions, key states and the rest of the hot state in Redis;
  relaygate-cache   - the same config with `cache: {enabled: true}` (issue 14), C0 and C1 only;
  relaygate-library - the same config with the provider's `transport: {kind: library}` (aiohttp
                      instead of the own client; issue 16), S1, S2 and S4 only;
  relaygate-h2      - the same config with the provider at bench/h2_upstream.py (hypercorn, TLS
                      with a self-signed certificate written by `openssl` into the run's temp dir,
                      ALPN h2 and http/1.1, pinned to core 1) and `transport: {kind: library,
                      http2: true}`, `tls: {ca_bundle: <the certificate>}` (httpx + h2; issue 16),
                      S1, S2 and S4 only; the h2 mock counts the POSTs it served by HTTP version
                      and each run records them, so the report shows the relay spoke HTTP/2;
  relaygate-<sha7>  - the in-memory relaygate of each older commit in BENCH_BASELINE (a comma-
                      separated list, by default 2c8d30e,29338ea), from `git archive` of its src/,
                      S1 and S2 only: 2c8d30e is issue 13's baseline (the build before the one
                      proxy path and the doors; issues 12 and 13's goals look it up by commit),
                      29338ea the build before issue 16's transport seam ("today's" for issue 16's
                      goal that S1 and S2 without a proxy stay within 5 % of it);
  minimal           - bench/minimal_relay.py, the yardstick;
  litellm           - LiteLLM's proxy from its own venv (bench/.venv-litellm), one worker, no DB.
Scenarios: S1 (wrk, non-streaming, 50 connections), S2 (wrk, streaming, 20 chunks), S3 (open
loop at 200 req/s), S4 (1,000 concurrent slow streams), start-up, idle RSS, import time; D1-D4
and E1 (issue 13's doors and issue 14's embeddings, the in-memory relaygate only), C0/C1 (the
cache target only); then py-spy profiles of relaygate under S1 and S2 and of relaygate-redis
under S1. The redis-server's own CPU per request is measured beside relaygate-redis's, the h2
mock's beside relaygate-h2's. Writes bench/RESULTS.md (quick runs write
bench/results/RESULTS-quick.md) and the raw figures to bench/results/.

relaygate-h2 needs httpx and h2 (relaygate's `http2` extra) and hypercorn in the project venv:
`make bench` installs them (`pip install -e '.[http2]' hypercorn==0.18.0`); without them, or
without `openssl`, the target is left out with a note.

TODO(bench) - relaygate's configuration is probed at run time (relaygate_features below): each
feature is switched on when its config key exists in src/relaygate/config/model.py, and the
report lists what was on. Still to do as relaygate grows:
  - client rate limits: clients[].rpm / tpm, set far above the offered load so they never refuse
    (they still do all their bookkeeping); on when ClientConfig has rpm/tpm (it does since the
    accounting commit 4ee2371);
  - the usage ledger (SPEC §9): `ledger: {enabled: true}`, batched writes to
    ./relaygate-data/relaygate.db; on when Config has `ledger`;
  - budgets (clients[].monthly_budget_usd + pricing:): not part of issue 7's feature list, so
    off; switch on here if the goals are to include budget reservations;
  - Redis: the `relaygate` target keeps the embedded defaults (state in memory, SQLite), which
    issue 7's goals are about; `relaygate-redis` is the same config with REDIS_URL set (issue 12),
    on when Config has `redis_url` and `redis-server` is installed (BENCH_SKIP_REDIS=1: off);
  - the baselines (BENCH_BASELINE, default 2c8d30e,29338ea; empty to leave them out) are
    measured in S1 and S2 only; add or move one when a later build becomes the one to stay
    within 5 % of (report.py looks each goal's baseline up by its commit);
  - the transport (issue 16): relaygate-library and relaygate-h2 are on when ProviderConfig has
    `transport`; the transport's bounds keep their defaults (max_connections_per_host 1,000:
    S4's 1,000 streams each get a connection over HTTP/1.1, and over HTTP/2 ten connections of
    100 streams, transport/http2.py's lanes);
  - metrics (/metrics, prometheus-client) are always on in relaygate; nothing to configure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _procs import (
    CLK_TCK,
    RedisServer,
    RssSampler,
    Server,
    TlsServer,
    cpu_seconds,
    free_port,
    hwm_mb,
    rss_mb,
    tree,
)
from report import (
    H2_TARGET,
    ISSUE13_BASELINE,
    ISSUE16_BASELINE,
    LIBRARY_TARGET,
    profile_lines,
    write_report,
)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PY = REPO / ".venv" / "bin" / "python"
RELAYGATE = REPO / ".venv" / "bin" / "relaygate"
LITELLM_VENV = BENCH / ".venv-litellm"
TOOLS_VENV = BENCH / ".venv-tools"
RESULTS_DIR = BENCH / "results"
CLIENT_KEY = "rg-bench-client-key-0123456789abcdefghijkl"
LITELLM_KEY = "sk-bench-litellm-master-key"
BASE_MODEL = "gpt-4o-mini"
SLOW_MODEL = "gpt-4o-mini-ttfb200-gap100-n20"  # the mock reads delays from the model name
TARGET_CPU, LOAD_CPU = "0", "1"
# older builds measured beside (BENCH_BASELINE, comma-separated): issue 13's (the build before the
# one proxy path and the doors) and issue 16's (the build before the transport seam)
BASELINE_COMMITS = f"{ISSUE13_BASELINE},{ISSUE16_BASELINE}"
BASELINE_SCENARIOS = ("S1", "S2")
# issue 16's transports: the library one (aiohttp) to the same mock, and HTTP/2 over TLS (httpx +
# h2) to bench/h2_upstream.py; S1, S2 and S4 only
TRANSPORT_SCENARIOS = ("S1", "S2", "S4")
LIBRARY_PROVIDER = "    transport: {kind: library}\n"
H2_PROVIDER = "    transport: {{kind: library, http2: true}}\n    tls: {{ca_bundle: {cert}}}\n"
LIBRARY_FEATURE = "library transport (the relaygate-library target)"
H2_FEATURE = "HTTP/2 to the provider (the relaygate-h2 target; httpx, h2, hypercorn)"
# issue 13's front doors, measured on the in-memory relaygate only, to the same OpenAI mock:
# scenario -> (door, stream); compared with its chat route's S1 (non-streamed) and S2 (streamed)
DOOR_SCENARIOS = {
    "D1": ("messages", False),
    "D2": ("messages", True),
    "D3": ("responses", False),
    "D4": ("responses", True),
    "E1": ("embeddings", False),  # issue 14: embeddings, held against S1
}
DOOR_PATHS = {
    "chat": "/v1/chat/completions",
    "messages": "/v1/messages",
    "responses": "/v1/responses",
    "embeddings": "/v1/embeddings",
}
# issue 14's response cache, on a relaygate of its own with `cache: {enabled: true}` (the only
# scenarios it runs): C1 is S1's request again and again (every one a hit after the first), C0
# the same request with a number that differs each time (every one a miss, stored)
CACHE_TARGET = "relaygate-cache"
CACHE_SCENARIOS = ("C0", "C1")
CACHE_CONFIG = "cache: {enabled: true, ttl_s: 900, max_entries: 100000}\n"

RELAYGATE_CONFIG = """\
# Written by bench/run.py: client auth (static key), a 3-key round-robin pool{extra_doc}.
providers:
  mock:
    type: openai
    base_url: {upstream}
    keys: [sk-mock-key-1, sk-mock-key-2, sk-mock-key-3]
    key_strategy: round_robin
    models: [{base}, {slow}]
{provider_extra}clients:
  - {{name: bench, key: "{key}"{limits}}}
{ledger}"""

LITELLM_CONFIG = """\
model_list:
{models}
general_settings:
  master_key: {key}
litellm_settings:
  telemetry: false
  set_verbose: false
"""


LITELLM_USED: dict[str, str] = {}  # the LiteLLM config of this run, for the report


class Settings:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.reps = 1 if quick else 3
        self.s1_s = 2 if quick else 10
        self.s2_s = 2 if quick else 10
        self.s3_s = 2 if quick else 10
        self.s3_rate = 200
        self.s4_streams = 200 if quick else 1000
        self.startup_reps = 2 if quick else 5
        self.import_reps = 3 if quick else 9
        self.profile_s = 3 if quick else 10


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def clean_env(**extra: str) -> dict[str, str]:
    """A small environment: no provider keys, DATABASE_URL or REDIS_URL leak into a target."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TERM", "TZ")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(extra)
    return env


# --- set-up ---------------------------------------------------------------------------------------
def ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log("installing wrk from Debian (apt-get)")
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False)
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install -y wrk")


def ensure_redis_server() -> bool:
    """redis-server for the relaygate-redis target (Debian's, installed when run as root)."""
    if not shutil.which("redis-server") and os.geteuid() == 0 and shutil.which("apt-get"):
        log("installing redis-server from Debian (apt-get)")
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=False)
    return shutil.which("redis-server") is not None


def ensure_venv(path: Path, packages: list[str], probe: str) -> str | None:
    """Create `path` with `packages` unless `probe` already exists in it. None, or why it failed."""
    if (path / "bin" / probe).exists():
        return None
    log(f"installing {' '.join(packages)} into {path.relative_to(REPO)} (once)")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        done = subprocess.run(
            [str(path / "bin" / "pip"), "install", "-q", *packages],
            capture_output=True,
            text=True,
            timeout=900,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if done.returncode != 0 or not (path / "bin" / probe).exists():
        tail = [ln for ln in done.stderr.splitlines() if "WARNING: Location" not in ln][-5:]
        return f"pip exited {done.returncode}: " + " | ".join(tail)
    return None


def versions(litellm_ok: bool) -> dict[str, str]:
    def out(cmd: list[str]) -> str:
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (subprocess.SubprocessError, OSError):
            return "?"
        text = (res.stdout or res.stderr).strip()  # `wrk --version` exits 1
        return text.splitlines()[0] if text else "?"

    probe = (
        "import importlib.metadata as m\n"
        "def v(p):\n"
        "    try:\n"
        "        return f'{p}=={m.version(p)}'\n"
        "    except m.PackageNotFoundError:\n"
        "        return f'{p} absent'\n"
        "print(' '.join(v(p) for p in "
        "('relaygate','aiohttp','uvicorn','uvloop','httptools','orjson','fastapi','starlette',"
        "'redis','hiredis','httpx','h2','hypercorn')))"
    )
    found = {
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "relaygate commit": out(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "uncommitted changes in src/ (measured as they were)": out(
            ["sh", "-c", f"git -C {REPO} status --porcelain src | wc -l | sed 's/$/ files/'"]
        ),
        "packages (project venv)": out([str(PY), "-c", probe]),
        "wrk": out(["wrk", "--version"]).split(" Copyright")[0],
    }
    if shutil.which("redis-server"):
        found["redis-server"] = out(["redis-server", "--version"])
    if shutil.which("openssl"):
        found["openssl (the h2 mock's certificate)"] = out(["openssl", "version"])
    if litellm_ok:
        found["litellm"] = out(
            [
                str(LITELLM_VENV / "bin" / "python"),
                "-c",
                "import importlib.metadata as m; print(m.version('litellm'))",
            ]
        )
    spy = TOOLS_VENV / "bin" / "py-spy"
    if spy.exists():
        found["py-spy"] = out([str(spy), "--version"])
    return found


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


def busy_elsewhere(mine: set[int], seconds: float = 1.0) -> list[tuple[str, float]]:
    """Processes not started by the bench using CPU right now: (name, share of one core)."""

    def snap() -> dict[int, tuple[str, float]]:
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                raw = (entry / "stat").read_text()
            except OSError:
                continue
            name = raw[raw.find("(") + 1 : raw.rfind(")")]
            fields = raw.rsplit(")", 1)[1].split()
            found[int(entry.name)] = (name, (int(fields[11]) + int(fields[12])) / CLK_TCK)
        return found

    before = snap()
    time.sleep(seconds)
    after = snap()
    busy = []
    for pid, (name, cpu) in after.items():
        if pid in mine or pid == os.getpid() or pid not in before:
            continue
        share = (cpu - before[pid][1]) / seconds
        if share >= 0.05:
            busy.append((name, round(share, 2)))
    return sorted(busy, key=lambda x: -x[1])


def load_snapshot(label: str, mine: set[int]) -> dict[str, Any]:
    snap = {
        "when": label,
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "busy_elsewhere": busy_elsewhere(mine),
    }
    log(f"load {label}: {snap['loadavg']} others busy: {snap['busy_elsewhere']}")
    return snap


# --- targets --------------------------------------------------------------------------------------
class Target:
    def __init__(
        self,
        name: str,
        server: Server,
        *,
        key: str = "",
        prefix: str = "",
        companion: Server | None = None,
        scenarios: tuple[str, ...] | None = None,
        versions_from: TlsServer | None = None,
    ) -> None:
        self.name, self.server, self.key, self.prefix = name, server, key, prefix
        # a process serving only this target (its Redis, its h2 mock): its CPU is counted apart
        self.companion = companion
        self.scenarios = scenarios  # the only scenarios it runs (None: S1-S4)
        self.versions_from = versions_from  # its h2 mock: POSTs by HTTP version, each run

    def runs(self, scen: str) -> bool:
        if self.scenarios is not None:
            return scen in self.scenarios
        if scen in DOOR_SCENARIOS:
            return self.name == "relaygate"
        return scen not in CACHE_SCENARIOS

    @property
    def url(self) -> str:
        return self.door_url("chat")

    def door_url(self, door: str) -> str:
        return f"http://127.0.0.1:{self.server.port}{DOOR_PATHS[door]}"

    def model(self, base: str) -> str:
        return self.prefix + base


def mock_server(name: str, cpu: str, work: Path) -> Server:
    port = free_port()
    argv = [str(PY), str(BENCH / "mock_upstream.py"), "--port", str(port), "--max-seconds", "7200"]
    return Server(name, argv, port, "/health", int(cpu), work, clean_env(), work / f"{name}.log")


def h2_mock_server(work: Path, cert: Path, key: Path) -> TlsServer:
    """bench/h2_upstream.py on core 1 beside the load, the fast mock's answers over TLS + h2."""
    port = free_port()
    argv = [str(PY), str(BENCH / "h2_upstream.py"), "--port", str(port)]
    argv += ["--certfile", str(cert), "--keyfile", str(key), "--max-seconds", "7200"]
    log_file = work / "h2-mock.log"
    return TlsServer(
        "h2-mock",
        argv,
        port,
        "/health",
        int(LOAD_CPU),
        work,
        clean_env(),
        log_file,
        cafile=str(cert),
    )


def self_signed_cert(work: Path) -> tuple[Path, Path] | str:
    """A self-signed certificate for 127.0.0.1 and localhost (EC P-256, 7 days), made with the
    openssl CLI in the run's temp dir: (cert, key), or why not."""
    cert, key = work / "h2-cert.pem", work / "h2-key.pem"
    if not shutil.which("openssl"):
        return "no openssl CLI"
    cmd = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    cmd += ["-nodes", "-keyout", str(key), "-out", str(cert), "-days", "7"]
    cmd += ["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0 or not cert.exists():
        return f"openssl exited {done.returncode}: {done.stderr.strip()[-200:]}"
    return cert, key


def http_versions(server: TlsServer) -> dict[str, int]:
    """The POSTs the h2 mock has served so far, by HTTP version."""
    body = server.get("/stats")
    return {str(k): int(v) for k, v in json.loads(body).items()} if body else {}


def relaygate_features() -> dict[str, bool]:
    """Which of issue 7's features this checkout of relaygate can switch on (see TODO above)."""
    code = (
        "import json, importlib.util;"
        "from relaygate.config.model import Config, ClientConfig, ProviderConfig;"
        "print(json.dumps([list(Config.model_fields), list(ClientConfig.model_fields),"
        " list(ProviderConfig.model_fields),"
        " all(importlib.util.find_spec(m) for m in ('httpx', 'h2', 'hypercorn'))]))"
    )
    res = subprocess.run([str(PY), "-c", code], capture_output=True, text=True, check=True)
    config_fields, client_fields, provider_fields, h2_deps = json.loads(res.stdout)
    transport = "transport" in provider_fields
    return {
        "client auth (static key)": True,
        "3-key pool, round_robin": True,
        "client rate limits (rpm, tpm)": "rpm" in client_fields and "tpm" in client_fields,
        "usage ledger": "ledger" in config_fields,
        "state on Redis (REDIS_URL)": "redis_url" in config_fields,
        "response cache (the relaygate-cache target)": _cache_works(),
        LIBRARY_FEATURE: transport,
        H2_FEATURE: transport and h2_deps,
    }


def _cache_works() -> bool:
    """Whether this checkout's cache does anything (issue 14): its config has `coalesce`, which
    came with the working cache (before it, `cache:` was accepted and ignored)."""
    code = (
        "from relaygate.config.model import CacheConfig;"
        "print('coalesce' in CacheConfig.model_fields)"
    )
    res = subprocess.run([str(PY), "-c", code], capture_output=True, text=True, check=False)
    return res.stdout.strip() == "True"


def relaygate_config(upstream: str, features: dict[str, bool], provider_extra: str = "") -> str:
    """The bench's relaygate config; `provider_extra`: lines added to the mock provider (the
    transport targets' `transport:` and `tls:`)."""
    limits = features["client rate limits (rpm, tpm)"]
    ledger = features["usage ledger"]
    extra = (", client rate limits" if limits else "") + (", the ledger" if ledger else "")
    return RELAYGATE_CONFIG.format(
        upstream=upstream,
        base=BASE_MODEL,
        slow=SLOW_MODEL,
        key=CLIENT_KEY,
        extra_doc=extra,
        # far above any offered load: never refuses, but does all its bookkeeping
        limits=", rpm: 1000000, tpm: 10000000000" if limits else "",
        ledger="ledger: {enabled: true}\n" if ledger else "",
        provider_extra=provider_extra,
    )


def relaygate_server(
    config_text: str,
    work: Path,
    *,
    name: str = "relaygate",
    redis_url: str | None = None,
    src: Path | None = None,
) -> Server:
    """`relaygate serve` in a home of its own (its own SQLite ledger); with `redis_url` the hot
    state is in that Redis; with `src` another source tree is served (PYTHONPATH wins over the
    editable install, as in compare.py)."""
    home = work / name
    home.mkdir(exist_ok=True)
    cfg = home / "relaygate.yaml"
    cfg.write_text(config_text)
    port = free_port()
    extra = {"REDIS_URL": redis_url} if redis_url else {}
    if src is None:
        argv = [str(RELAYGATE), "serve", "--config", str(cfg), "--port", str(port)]
    else:
        extra["PYTHONPATH"] = str(src)
        argv = [str(PY), "-m", "relaygate", "serve", "--config", str(cfg), "--port", str(port)]
    env = clean_env(**extra)
    return Server(name, argv, port, "/health", 0, home, env, work / f"{name}.log")


def resolve_commit(commit: str) -> str | None:
    """The commit's short hash (7 characters), or None when git does not know it."""
    res = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    return res.stdout.strip()[:7] if res.returncode == 0 and res.stdout.strip() else None


def baseline_tree(commit: str, work: Path) -> tuple[Path | None, str | None]:
    """src/ of `commit` from git (`git archive`), or why not."""
    dest = work / f"src-{commit}"
    dest.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit, "src"], capture_output=True, timeout=120
    )
    if archive.returncode != 0:
        return None, archive.stderr.decode(errors="replace").strip()[-300:]
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest / "src", None


def minimal_server(upstream: str, work: Path) -> Server:
    port = free_port()
    argv = [str(PY), str(BENCH / "minimal_relay.py"), "--port", str(port), "--upstream", upstream]
    return Server("minimal", argv, port, "/health", 0, work, clean_env(), work / "minimal.log")


def litellm_server(upstream: str, work: Path) -> Server:
    home = work / "litellm"
    home.mkdir(exist_ok=True)
    entries = "".join(
        f"  - model_name: {m}\n    litellm_params:\n      model: openai/{m}\n"
        f"      api_base: {upstream}\n      api_key: sk-mock-key-1\n"
        for m in (BASE_MODEL, SLOW_MODEL)
    )
    cfg = home / "litellm.yaml"
    cfg.write_text(LITELLM_CONFIG.format(models=entries.rstrip("\n"), key=LITELLM_KEY))
    LITELLM_USED["config"] = cfg.read_text()
    port = free_port()
    argv = [
        str(LITELLM_VENV / "bin" / "litellm"),
        *("--config", str(cfg), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"),
    ]
    env = clean_env(
        LITELLM_LOCAL_MODEL_COST_MAP="True",  # no fetch of the price map from the internet
        LITELLM_LOG="ERROR",
        LITELLM_TELEMETRY="False",
    )
    return Server("litellm", argv, port, "/health/liveliness", 0, home, env, work / "litellm.log")


# --- load generators ------------------------------------------------------------------------------
def wrk(
    target: Target, *, seconds: int, stream: bool, door: str = "chat", nonce: bool = False
) -> dict[str, Any]:
    env = clean_env(
        BENCH_MODEL=target.model(BASE_MODEL),
        BENCH_STREAM="1" if stream else "0",
        BENCH_KEY=target.key,
        BENCH_DOOR=door,
        BENCH_NONCE="1" if nonce else "0",
    )
    cmd = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", "-c50", f"-d{seconds}s", "--timeout", "10s"]
    cmd += ["-s", str(BENCH / "post.lua"), target.door_url(door)]
    side = target.companion
    cpu0 = cpu_seconds(target.server.pid)
    side0 = cpu_seconds(side.pid) if side is not None else 0.0
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds + 60)
    cpu = cpu_seconds(target.server.pid) - cpu0
    side_cpu = cpu_seconds(side.pid) - side0 if side is not None else None
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result: {res.stdout[-500:]} {res.stderr[-500:]}")
    data: dict[str, Any] = json.loads(line[8:])
    data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
    data["errors"] = (
        sum(data[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors"))
        + data["timeouts"]
    )
    data["cpu_us_per_req"] = cpu * 1e6 / data["requests"] if data["requests"] else None
    if side_cpu is not None and data["requests"]:  # e.g. redis-server's CPU, on core 1
        data["companion_cpu_us_per_req"] = side_cpu * 1e6 / data["requests"]
    data["command"] = " ".join(f"{k}={v}" for k, v in env.items() if k.startswith("BENCH_"))
    data["command"] += " " + " ".join(cmd)
    return data


def door_run(door: str, stream: bool, s: Any) -> Callable[[Target], dict[str, Any]]:
    """A front-door scenario (DOOR_SCENARIOS): wrk with the door's own body and path."""
    seconds = s.s2_s if stream else s.s1_s
    return lambda t: wrk(t, seconds=seconds, stream=stream, door=door)


def py_client(script: str, args: list[str], timeout: float) -> tuple[dict[str, Any], str]:
    cmd = ["taskset", "-c", LOAD_CPU, str(PY), str(BENCH / script), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=BENCH)
    if res.returncode != 0:
        raise RuntimeError(f"{script} failed: {res.stderr[-1000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1]), " ".join(cmd)


def openloop(target: Target, s: Settings) -> dict[str, Any]:
    args = ["--url", target.url, "--rate", str(s.s3_rate), "--duration", str(s.s3_s)]
    args += ["--warmup", "1", "--timeout", "10", "--model", target.model(BASE_MODEL)]
    if target.key:
        args += ["--key", target.key]
    data, cmd = py_client("openloop.py", args, timeout=s.s3_s + 60)
    data["command"] = cmd
    return data


def streams(target: Target, s: Settings) -> dict[str, Any]:
    args = ["--url", target.url, "--streams", str(s.s4_streams), "--timeout", "60"]
    args += ["--model", target.model(SLOW_MODEL)]
    if target.key:
        args += ["--key", target.key]
    with RssSampler(target.server.pid) as sampler:
        data, cmd = py_client("streamclient.py", args, timeout=120)
    data["peak_rss_mb"] = sampler.peak_mb
    data["vm_hwm_mb"] = hwm_mb(target.server.pid)
    data["command"] = cmd
    return data


# --- one-off measurements -------------------------------------------------------------------------
def import_time(reps: int) -> dict[str, Any]:
    code = "import time;t=time.perf_counter();import relaygate;print(time.perf_counter()-t)"
    cmd = ["taskset", "-c", TARGET_CPU, str(PY), "-c", code]
    inproc, wall = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO)
        wall.append(time.perf_counter() - t0)
        inproc.append(float(res.stdout.strip()))
    res = subprocess.run(
        [str(PY), "-X", "importtime", "-c", "import relaygate"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = []
    for line in res.stderr.splitlines():
        parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
        if len(parts) == 3 and parts[1].isdigit():
            rows.append((int(parts[1]), parts[2]))
    top = sorted(rows, reverse=True)[:12]
    return {
        "import_ms": statistics.median(inproc) * 1000,
        "import_runs_ms": [round(v * 1000, 1) for v in inproc],
        "process_wall_ms": statistics.median(wall) * 1000,
        "top_cumulative_us": top,
        "command": " ".join(cmd),
    }


def startup_times(make: Any, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        server = make()
        server.start()
        try:
            out.append(server.wait_ready(timeout=90))
        finally:
            server.stop()
    return out


def profile(
    target: Target, s: Settings, *, stream: bool, svg: Path | None, tag: str = ""
) -> dict[str, Any]:
    spy = TOOLS_VENV / "bin" / "py-spy"
    tag = tag or ("s2" if stream else "s1")
    raw = RESULTS_DIR / f"profile-{tag}.txt"
    base = ["taskset", "-c", LOAD_CPU, str(spy), "record", "--pid", str(target.server.pid)]
    # --gil: only the thread holding the GIL is sampled, i.e. where the one core's time goes
    # (idle thread-pool workers would otherwise show up as busy)
    base += ["--rate", "250", "--duration", str(s.profile_s), "--gil"]
    cmds = [[*base, "--format", "raw", "-o", str(raw)]]
    if svg is not None:
        cmds.append([*base, "--format", "flamegraph", "-o", str(svg)])
    used = []
    for cmd in cmds:
        spy_proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)
        load = wrk(target, seconds=s.profile_s + 1, stream=stream)
        try:
            _, err = spy_proc.communicate(timeout=s.profile_s + 60)
        except subprocess.TimeoutExpired:
            spy_proc.kill()
            err = b"timeout"
        if spy_proc.returncode != 0:
            log(f"py-spy failed: {err.decode(errors='replace')[-300:]}")
        used.append(" ".join(cmd))
        target.server.wait_idle()
    return {
        "raw": str(raw),
        "commands": used,
        "load_rps": load["rps"],
        "table": profile_lines(raw),  # kept in the raw figures: results/ is not committed
    }


def log_warnings(work: Path, names: tuple[str, ...]) -> list[str]:
    """What the relaygate targets logged at WARNING or worse (e.g. Redis unavailable: the
    failover answered from memory, and the Redis figures would not be Redis'), counted by line;
    a traceback by its last line (the exception)."""
    out = []
    for name in filter(None, names):
        path = work / f"{name}.log"
        if not path.exists():
            continue
        found: dict[str, int] = {}
        lines = path.read_text(errors="replace").splitlines()
        for i, line in enumerate(lines):
            if line.startswith("Traceback"):
                end = next((ln for ln in lines[i + 1 :] if ln and not ln[0].isspace()), "")
                line = f"Traceback: {end}"
            elif not any(level in line for level in ("WARNING", "ERROR", "CRITICAL")):
                continue
            text = line.split(" - ", 1)[-1][:160] if " - " in line else line[:160]
            found[text] = found.get(text, 0) + 1
        if found:
            parts = "; ".join(f"{n} x `{text}`" for text, n in list(found.items())[:5])
            out.append(f"{name} logged warnings or errors: {parts}")
    return out


# --- the run --------------------------------------------------------------------------------------
def median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def measured(target: Target, fn: Callable[[Target], dict[str, Any]]) -> dict[str, Any]:
    """One run of a scenario; for a target with an h2 mock, the POSTs that mock served during
    the run by HTTP version (`upstream_http_versions`, e.g. {"2": 1000})."""
    if target.versions_from is None:
        return fn(target)
    before = http_versions(target.versions_from)
    data = fn(target)
    after = http_versions(target.versions_from)
    data["upstream_http_versions"] = {
        v: n - before.get(v, 0) for v, n in sorted(after.items()) if n != before.get(v, 0)
    }
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description="relaygate benchmark (issue 7)")
    ap.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1")
    ap.add_argument(
        "--skip-litellm", action="store_true", default=bool(os.environ.get("BENCH_SKIP_LITELLM"))
    )
    ap.add_argument(
        "--skip-redis", action="store_true", default=bool(os.environ.get("BENCH_SKIP_REDIS"))
    )
    ap.add_argument(
        "--baseline",
        default=os.environ.get("BENCH_BASELINE", BASELINE_COMMITS),
        help="commits, comma-separated, whose in-memory relaygate is measured in S1 and S2 beside "
        f"this one (default {BASELINE_COMMITS}; empty: none)",
    )
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument(
        "--report-only",
        metavar="RAW_JSON",
        help="rewrite the report from a run's raw figures (e.g. after editing ANALYSIS.md)",
    )
    args = ap.parse_args()
    if args.report_only:
        saved = json.loads(Path(args.report_only).read_text())
        out = RESULTS_DIR / "RESULTS-quick.md" if saved.get("quick") else BENCH / "RESULTS.md"
        write_report(saved, out, bench_dir=BENCH)
        log(f"wrote {out.relative_to(REPO)}")
        return
    s = Settings(args.quick)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 65536), hard), hard))
    if (os.cpu_count() or 1) < 2:
        sys.exit("the bench needs 2 cores: one for the target, one for the load")
    ensure_wrk()
    RESULTS_DIR.mkdir(exist_ok=True)
    notes: list[str] = []
    spy_err = None if args.no_profile else ensure_venv(TOOLS_VENV, ["py-spy"], "py-spy")
    if spy_err:
        notes.append(f"py-spy could not be installed ({spy_err}); no profile.")
    litellm_err: str | None = "skipped (BENCH_SKIP_LITELLM)" if args.skip_litellm else None
    if litellm_err is None and s.quick and not (LITELLM_VENV / "bin" / "litellm").exists():
        litellm_err = "skipped in a quick run (not installed yet; a full run installs it)"
    if litellm_err is None:
        litellm_err = ensure_venv(LITELLM_VENV, ["litellm[proxy]"], "litellm")
    if litellm_err:
        notes.append(f"LiteLLM not measured: {litellm_err}")
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="relaygate-bench-"))
    servers: list[Server] = []
    baselines: list[tuple[str, Path]] = []  # (target name, its src/)
    raw: dict[str, Any] = {"quick": s.quick, "notes": notes, "settings": vars(s), "load": []}
    try:
        raw["versions"] = versions(litellm_err is None)
        upstream = mock_server("upstream-mock", LOAD_CPU, work)
        upstream.start()
        servers.append(upstream)
        upstream.wait_ready()
        up_url = f"http://127.0.0.1:{upstream.port}/v1"
        raw["features"] = relaygate_features()
        rg_config = relaygate_config(up_url, raw["features"])
        raw["relaygate_config"] = rg_config
        redis: RedisServer | None = None
        if args.skip_redis:
            notes.append("relaygate-redis not measured: skipped (BENCH_SKIP_REDIS).")
        elif not raw["features"]["state on Redis (REDIS_URL)"]:
            notes.append("relaygate-redis not measured: this relaygate has no redis_url setting.")
        elif not ensure_redis_server():
            notes.append("relaygate-redis not measured: redis-server is not installed.")
        else:
            redis = RedisServer.make("redis", int(LOAD_CPU), work, clean_env())
            redis.start()
            servers.append(redis)
            redis.wait_ready()
            raw["redis"] = {"url": redis.url, "command": redis.command}
        raw["baselines"] = []
        for commit in filter(None, (c.strip() for c in args.baseline.split(","))):
            sha = resolve_commit(commit)
            if sha is None:
                notes.append(f"baseline {commit} not measured: git does not know it.")
                continue
            name = f"relaygate-{sha}"
            if any(name == known for known, _ in baselines):
                continue
            src, why = baseline_tree(sha, work)
            if src is None:
                notes.append(f"{name} not measured: git archive failed ({why}).")
                continue
            baselines.append((name, src))
            raw["baselines"].append({"commit": commit, "sha": sha, "name": name})
        library_config = h2_config = ""
        h2_mock: TlsServer | None = None
        if not raw["features"][LIBRARY_FEATURE]:
            notes.append(
                f"{LIBRARY_TARGET} and {H2_TARGET} not measured: this relaygate has no transport."
            )
        else:
            library_config = relaygate_config(up_url, raw["features"], LIBRARY_PROVIDER)
            made = self_signed_cert(work) if raw["features"][H2_FEATURE] else "not made"
            if not raw["features"][H2_FEATURE]:
                notes.append(
                    f"{H2_TARGET} not measured: httpx, h2 or hypercorn missing from the project "
                    "venv (`make bench` installs them: pip install -e '.[http2]' hypercorn)."
                )
            elif isinstance(made, str):
                notes.append(f"{H2_TARGET} not measured: no certificate ({made}).")
            else:
                cert, key = made
                h2_mock = h2_mock_server(work, cert, key)
                h2_mock.start()
                servers.append(h2_mock)
                h2_mock.wait_ready()
                h2_url = f"https://127.0.0.1:{h2_mock.port}/v1"
                h2_config = relaygate_config(h2_url, raw["features"], H2_PROVIDER.format(cert=cert))
        raw["transport_configs"] = {LIBRARY_TARGET: library_config, H2_TARGET: h2_config}

        log("import time")
        raw["import"] = import_time(s.import_reps)
        log("start-up times")
        makers = {
            "relaygate": (lambda: relaygate_server(rg_config, work), s.startup_reps),
            "minimal": (lambda: minimal_server(up_url, work), s.startup_reps),
        }
        if redis is not None:
            redis_url = redis.url
            makers["relaygate-redis"] = (
                lambda: relaygate_server(
                    rg_config, work, name="relaygate-redis", redis_url=redis_url
                ),
                s.startup_reps,
            )
        if litellm_err is None:
            makers["litellm"] = (lambda: litellm_server(up_url, work), 2 if not s.quick else 1)
        raw["startup_s"] = {name: startup_times(make, n) for name, (make, n) in makers.items()}

        direct_srv = mock_server("direct-mock", TARGET_CPU, work)
        targets = [Target("direct", direct_srv)]
        targets.append(
            Target("relaygate", relaygate_server(rg_config, work), key=CLIENT_KEY, prefix="mock/")
        )
        if redis is not None:
            rg_redis = relaygate_server(
                rg_config, work, name="relaygate-redis", redis_url=redis.url
            )
            targets.append(
                Target("relaygate-redis", rg_redis, key=CLIENT_KEY, prefix="mock/", companion=redis)
            )
        if raw["features"]["response cache (the relaygate-cache target)"]:
            cached = relaygate_server(rg_config + CACHE_CONFIG, work, name=CACHE_TARGET)
            targets.append(
                Target(
                    CACHE_TARGET, cached, key=CLIENT_KEY, prefix="mock/", scenarios=CACHE_SCENARIOS
                )
            )
        else:
            notes.append(f"{CACHE_TARGET} not measured: this relaygate has no cache.enabled.")
        if library_config:
            lib = relaygate_server(library_config, work, name=LIBRARY_TARGET)
            targets.append(
                Target(
                    LIBRARY_TARGET,
                    lib,
                    key=CLIENT_KEY,
                    prefix="mock/",
                    scenarios=TRANSPORT_SCENARIOS,
                )
            )
        if h2_config and h2_mock is not None:
            over_h2 = relaygate_server(h2_config, work, name=H2_TARGET)
            targets.append(
                Target(
                    H2_TARGET,
                    over_h2,
                    key=CLIENT_KEY,
                    prefix="mock/",
                    companion=h2_mock,
                    scenarios=TRANSPORT_SCENARIOS,
                    versions_from=h2_mock,
                )
            )
        for name, src in baselines:
            old = relaygate_server(rg_config, work, name=name, src=src)
            targets.append(
                Target(name, old, key=CLIENT_KEY, prefix="mock/", scenarios=BASELINE_SCENARIOS)
            )
        targets.append(Target("minimal", minimal_server(up_url, work)))
        if litellm_err is None:
            targets.append(Target("litellm", litellm_server(up_url, work), key=LITELLM_KEY))
        for t in targets:
            t.server.start()
            servers.append(t.server)
            t.server.wait_ready(timeout=90)
        time.sleep(2.0)
        raw["idle_rss_mb"] = {t.name: rss_mb(t.server.pid) for t in targets}
        raw["commands"] = {t.name: t.server.command for t in targets}
        raw["commands"]["upstream-mock"] = upstream.command
        if redis is not None:
            raw["commands"]["redis"] = redis.command
        if h2_mock is not None:
            raw["commands"]["h2-mock"] = h2_mock.command
        mine = {os.getpid(), *(p for srv in servers for p in tree(srv.pid))}
        raw["load"].append(load_snapshot("before", mine))
        log("warm-up")
        for t in targets:
            wrk(t, seconds=1, stream=False)
            t.server.wait_idle()

        results: dict[str, dict[str, list[dict[str, Any]]]] = {}
        scenario_runs: list[tuple[str, Callable[[Target], dict[str, Any]]]] = [
            ("S1", lambda t: wrk(t, seconds=s.s1_s, stream=False)),
            ("S2", lambda t: wrk(t, seconds=s.s2_s, stream=True)),
            ("S3", lambda t: openloop(t, s)),
            ("S4", lambda t: streams(t, s)),
        ]
        for scen_name, (door, door_stream) in DOOR_SCENARIOS.items():
            scenario_runs.append((scen_name, door_run(door, door_stream, s)))
        scenario_runs.append(("C0", lambda t: wrk(t, seconds=s.s1_s, stream=False, nonce=True)))
        scenario_runs.append(("C1", lambda t: wrk(t, seconds=s.s1_s, stream=False)))
        for scen, fn in scenario_runs:
            results[scen] = {t.name: [] for t in targets}
            for rep in range(s.reps):
                for t in targets:
                    if scen == "S4" and t.name == "litellm" and rep > 0:
                        continue  # one S4 run of LiteLLM is enough, and it is slow
                    if not t.runs(scen):
                        continue
                    log(f"{scen} run {rep + 1}/{s.reps} {t.name}")
                    t.server.wait_idle()
                    results[scen][t.name].append(measured(t, fn))
            raw["load"].append(load_snapshot(f"after {scen}", mine))
        raw["results"] = results
        raw["litellm_config"] = LITELLM_USED.get("config", "")
        raw["rss_after_mb"] = {t.name: rss_mb(t.server.pid) for t in targets}
        raw["hwm_mb"] = {t.name: hwm_mb(t.server.pid) for t in targets}
        if redis is not None:
            raw["redis"]["rss_after_mb"] = rss_mb(redis.pid)

        if not args.no_profile and not spy_err:
            rg = next(t for t in targets if t.name == "relaygate")
            log("profiling relaygate under S1 and S2 with py-spy")
            svg = BENCH / "profile-s1.svg" if not s.quick else RESULTS_DIR / "profile-s1.svg"
            raw["profile"] = {
                "S1": profile(rg, s, stream=False, svg=svg),
                "S2": profile(rg, s, stream=True, svg=None),
            }
            rg_redis_t = next((t for t in targets if t.name == "relaygate-redis"), None)
            if rg_redis_t is not None:
                log("profiling relaygate-redis under S1 with py-spy")
                raw["profile"]["S1, relaygate-redis"] = profile(
                    rg_redis_t, s, stream=False, svg=None, tag="s1-redis"
                )
    finally:
        for srv in reversed(servers):
            srv.stop()
    names = ("relaygate", "relaygate-redis", CACHE_TARGET, LIBRARY_TARGET, H2_TARGET, "h2-mock")
    notes.extend(log_warnings(work, (*names, *(name for name, _ in baselines))))
    raw["elapsed_s"] = time.time() - started
    raw["finished_utc"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS_DIR / f"raw-{stamp}.json").write_text(json.dumps(raw, indent=1, default=str))
    out = RESULTS_DIR / "RESULTS-quick.md" if s.quick else BENCH / "RESULTS.md"
    write_report(raw, out, bench_dir=BENCH)
    if not s.quick:  # the raw figures behind RESULTS.md stay with it, for --report-only
        (BENCH / "RESULTS.json").write_text(json.dumps(raw, indent=1, default=str))
    shutil.rmtree(work, ignore_errors=True)
    log(f"wrote {out.relative_to(REPO)} in {raw['elapsed_s']:.0f} s")


if __name__ == "__main__":
    main()
