"""Soak test of a real `relaygate serve` (not part of `make test`): mixed traffic at a fixed rate
for minutes while the gateway's RSS, open fds, asyncio tasks and ledger rows are sampled; says
whether each series grows or stays flat.

It owns, all on 127.0.0.1 and all stopped at the end: the fast mock upstream (a subprocess of
bench/mock_upstream.py), an error upstream of its own (raw asyncio in this process, OpenAI wire
format: 500, 429 with retry-after, answers slower than the provider timeout, streams cut
mid-way, slow answers), the gateway (a subprocess in a temp dir with its YAML and SQLite file)
and the load (aiohttp, one loop, open loop, in-flight capped, a timeout on every request).

    .venv/bin/python bench/soak.py [--duration 600] [--rate 40] [--interval 10]
        [--out bench/results/soak.json] [--markdown-into bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from statistics import mean
from typing import Any

import aiohttp
from _procs import free_port, status_kb

BENCH = Path(__file__).resolve().parent
SECRET = "soak-admin-secret-0123456789abcdef"  # noqa: S105 - a throwaway gateway's
KEYS = {c: f"rg-soak-{c}-0123456789" for c in ("main", "limited", "budget")}
PRICE = 1000.0  # USD per million tokens of mock/gpt-4o-mini: the mock's 32 tokens cost 0.032
CAP = 256  # requests in flight; a send due while the cap is reached is skipped and counted
TIMEOUT = aiohttp.ClientTimeout(total=20)
HANG_S = 1.5  # longer than the flaky provider's timeout_s
REFUSALS = {"rate_limit_exceeded", "budget_exceeded", "invalid_api_key", "model_not_allowed"}
Item = tuple[int, str, str, str, bool]  # weight, kind, client, model, stream
MIX: list[Item] = [
    (30, "plain", "main", "mock/gpt-4o-mini", False),
    (25, "stream", "main", "mock/gpt-4o-mini-ttfb20-gap10-n20", True),
    (5, "slow", "main", "slow/slow-200", False),
    (5, "500", "main", "flaky/fail500", False),
    (4, "429", "main", "flaky/rl429", False),
    (2, "timeout", "main", "flaky/hang", False),
    (3, "cut stream", "main", "flaky/cut", True),
    (10, "over rpm", "limited", "mock/gpt-4o-mini", False),
    (5, "over budget", "budget", "mock/gpt-4o-mini", False),
    (6, "cancel stream", "main", "mock/gpt-4o-mini-ttfb20-gap50-n40", True),
    (5, "cancel plain", "main", "slow/slow-1500", False),
]
CONFIG = """\
providers:
  mock: {{type: openai, base_url: "http://127.0.0.1:{mock}/v1", key_strategy: round_robin,
         keys: [sk-soak-m1, sk-soak-m2, sk-soak-m3]}}
  flaky: {{type: openai, base_url: "http://127.0.0.1:{err}/v1", keys: [sk-soak-f1, sk-soak-f2],
          timeout_s: 1.0}}
  slow: {{type: openai, base_url: "http://127.0.0.1:{err}/v1", keys: [sk-soak-s1]}}
routing: {{priority: [mock], default_models: {{mock: gpt-4o-mini}}}}
retries: {{max_attempts: 2, deadline_s: 10, backoff_base_s: 0.05, backoff_max_s: 0.2,
          default_cooldown_s: 1, failure_cooldown_s: 1, failure_cooldown_max_s: 2}}
clients:
  - {{name: main, key: {main}}}
  - {{name: limited, key: {limited}, rpm: 60, tpm: 3000}}
  - {{name: budget, key: {budget}, monthly_budget_usd: {budget_usd}}}  # ~20 requests
pricing:
  "mock/gpt-4o-mini": {{input_per_mtok: {price}, output_per_mtok: {price}}}
  "*": {{input_per_mtok: 0.1, output_per_mtok: 0.4}}
ledger: {{enabled: true, max_buffer_rows: 50000}}
database_url: "sqlite:///{db}"
"""

# --- the error upstream: behaviour from the model name ---------------------------------------


def _http(status: str, body: bytes, extra: str = "") -> bytes:
    head = f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{extra}"
    return f"{head}content-length: {len(body)}\r\n\r\n".encode() + body


def _error(message: str, type_: str, code: str | None) -> bytes:
    error = {"message": message, "type": type_, "param": None, "code": code}
    return json.dumps({"error": error}).encode()


ERR_500 = _http(
    "500 Internal Server Error",
    _error("The server had an error while processing your request.", "server_error", None),
)
ERR_429 = _http(
    "429 Too Many Requests",
    _error(
        "Rate limit reached for gpt-4o-mini in organization org-soak on requests per min (RPM):"
        " Limit 3, Used 3, Requested 1. Please try again in 1s.",
        "requests",
        "rate_limit_exceeded",
    ),
    "retry-after: 1\r\nx-ratelimit-remaining-requests: 0\r\nx-ratelimit-reset-requests: 1s\r\n",
)
USAGE = {"prompt_tokens": 12, "completion_tokens": 20, "total_tokens": 32}
BASE = {"id": "chatcmpl-soak", "created": 1755133833, "system_fingerprint": None}


def _completion(model: str) -> bytes:
    message = {"role": "assistant", "content": "Hello from the soak upstream.", "refusal": None}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
    body = {**BASE, "object": "chat.completion", "model": model, "choices": [choice]}
    return _http("200 OK", json.dumps({**body, "usage": USAGE}).encode())


def _event(model: str, choices: list[dict[str, Any]], usage: Any) -> bytes:
    obj = {**BASE, "object": "chat.completion.chunk", "model": model, "choices": choices}
    data = b"data: " + json.dumps({**obj, "usage": usage}).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


async def _stream(writer: asyncio.StreamWriter, model: str, cut: bool) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
    writer.write(b"transfer-encoding: chunked\r\n\r\n")
    deltas = [{"role": "assistant", "content": ""}] + [{"content": f" w{i}"} for i in range(8)]
    for delta in deltas[: 4 if cut else None]:
        writer.write(_event(model, [{"index": 0, "delta": delta, "finish_reason": None}], None))
        await writer.drain()
        await asyncio.sleep(0.02)
    if cut:  # the connection drops: no finish, no [DONE], no last chunk
        return
    writer.write(_event(model, [{"index": 0, "delta": {}, "finish_reason": "stop"}], None))
    writer.write(_event(model, [], USAGE) + b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")


async def _upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One keep-alive connection of the error upstream."""
    try:
        while True:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
            found = re.search(r"\r\ncontent-length:\s*(\d+)", head)
            body = json.loads(await reader.readexactly(int(found.group(1)))) if found else {}
            model = str(body.get("model", ""))
            if slow := re.search(r"slow-(\d+)", model):
                await asyncio.sleep(int(slow.group(1)) / 1000)
            if "fail500" in model:
                writer.write(ERR_500)
            elif "rl429" in model:
                writer.write(ERR_429)
            elif body.get("stream"):  # the gateway always asks for the usage chunk
                await _stream(writer, model, cut="cut" in model)
                if "cut" in model:
                    return
            else:
                await asyncio.sleep(HANG_S if "hang" in model else 0)
                writer.write(_completion(model))
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


# --- processes and samples -------------------------------------------------------------------


def _spawn(
    cmd: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes], timeout: float = 45.0) -> tuple[int | None, float]:
    """SIGTERM; the exit code (None when it had to be killed) and the seconds it took."""
    t = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout), round(time.monotonic() - t, 2)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None, round(time.monotonic() - t, 2)


def _ledger_rows(db: Path) -> int | None:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as con:
            return int(con.execute("SELECT count(*) FROM ledger").fetchone()[0])
    except sqlite3.Error:
        return None


def _metric(text: str, name: str) -> float | None:
    found = re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    return sum(float(v) for v in found) if found else None


class Soak:
    def __init__(self, args: argparse.Namespace, gw: subprocess.Popen[bytes], port: int) -> None:
        self.args, self.gw, self.url = args, gw, f"http://127.0.0.1:{port}"
        self.db = Path(args.workdir) / "soak.db"
        self.samples: list[dict[str, Any]] = []
        self.outcomes: Counter[str] = Counter()
        self.sent = 0
        self.t0 = 0.0

    async def sample(self, admin: aiohttp.ClientSession, phase: str) -> dict[str, Any]:
        if self.gw.poll() is not None:
            raise SystemExit(
                f"the gateway exited ({self.gw.returncode}) during the soak; see its log"
            )
        text = ""
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with admin.get(f"{self.url}/metrics", headers={"admin-secret": SECRET}) as r:
                text = await r.text()
        tasks = _metric(text, "relaygate_event_loop_tasks")
        if tasks is None:
            print("warning: relaygate_event_loop_tasks missing from /metrics", file=sys.stderr)
        pid = self.gw.pid
        return {
            "t": round(time.monotonic() - self.t0, 1) if self.t0 else 0.0,
            "phase": phase,
            "rss_mb": round(status_kb(pid, "VmRSS") / 1024, 1),
            "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "tasks": tasks,
            "ledger_rows": _ledger_rows(self.db),
            "ledger_queue": _metric(text, "relaygate_ledger_queue_depth"),
            "refusals_metric": _metric(text, "relaygate_refusals_total"),
            "sent": self.sent,
            "outcomes": dict(self.outcomes),
        }

    async def send(
        self, session: aiohttp.ClientSession, kind: str, client: str, model: str, stream: bool
    ) -> str:
        """One request; its outcome: `<status> <error code>`, `200`, or what happened."""
        body = {
            "model": model,
            "messages": [{"role": "user", "content": "soak"}],
            "max_tokens": 16,
            "stream": stream,
        }
        auth = {"Authorization": f"Bearer {KEYS[client]}"}
        url = f"{self.url}/v1/chat/completions"
        async with session.post(url, json=body, headers=auth, timeout=TIMEOUT) as resp:
            if resp.status != 200:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    return f"{resp.status} {json.loads(await resp.read())['error']['code']}"
                return f"{resp.status} ?"
            if not stream:
                await resp.read()
                return "200"
            events, last = 0, b""
            async for line in resp.content:
                if line.startswith(b"data: "):
                    events, last = events + 1, line.strip()
                    if kind == "cancel stream" and events == 3:
                        resp.close()  # the client goes away mid-stream
                        return "cancelled mid-stream"
            return "200 [DONE]" if last == b"data: [DONE]" else "200, ended by an error event"

    async def one(self, session: aiohttp.ClientSession, item: Item) -> None:
        _, kind, client, model, stream = item
        try:  # "cancel plain": the client goes away before the (1.5 s) answer
            wait = 0.3 if kind == "cancel plain" else None
            outcome = await asyncio.wait_for(self.send(session, kind, client, model, stream), wait)
        except TimeoutError:
            outcome = "cancelled mid-request" if kind == "cancel plain" else "client timeout"
        except aiohttp.ClientError as exc:
            outcome = f"client error {type(exc).__name__}"
        self.outcomes[f"{kind}: {outcome}"] += 1

    async def load(self) -> None:
        rng, weights = random.Random(7), [m[0] for m in MIX]
        inflight: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CAP)) as session:
            for i in range(int(self.args.duration * self.args.rate)):
                await asyncio.sleep(max(0.0, self.t0 + i / self.args.rate - time.monotonic()))
                item = rng.choices(MIX, weights)[0]
                self.sent += 1
                if len(inflight) >= CAP:
                    self.outcomes[f"{item[1]}: skipped (in-flight cap)"] += 1
                    continue
                task = asyncio.create_task(self.one(session, item))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
            if inflight:
                await asyncio.wait(inflight, timeout=30)

    async def run(self, err_port: int) -> dict[str, Any]:
        server = await asyncio.start_server(_upstream, "127.0.0.1", err_port)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as admin:
            for _ in range(100):
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with admin.get(f"{self.url}/health") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.2)
            else:
                raise SystemExit("the gateway did not become healthy; see its log")
            await asyncio.sleep(1)
            self.samples.append(await self.sample(admin, "idle before"))
            self.t0 = time.monotonic()
            load = asyncio.create_task(self.load())
            n = 1
            while not load.done():
                with contextlib.suppress(TimeoutError):
                    delay = self.t0 + n * self.args.interval - time.monotonic()
                    await asyncio.wait_for(asyncio.shield(load), max(0.0, delay))
                if not load.done():
                    self.samples.append(await self.sample(admin, "load"))
                    print(
                        json.dumps({k: v for k, v in self.samples[-1].items() if k != "outcomes"})
                    )
                    n += 1
            await load
            load_s = round(time.monotonic() - self.t0, 1)
            base = self.samples[0]
            for _ in range(45):  # idle upstream connections are swept after 30 s
                await asyncio.sleep(1)
                after = await self.sample(admin, "idle after")
                fds_back = after["fds"] <= base["fds"] + 4
                if fds_back and (after["tasks"] or 0) <= (base["tasks"] or 0) + 2:
                    break
            self.samples.append(after)
        exit_code, exit_s = await asyncio.to_thread(_stop, self.gw)
        server.close()
        log = (Path(self.args.workdir) / "gateway.log").read_text(errors="replace")
        return {
            "samples": self.samples,
            "outcomes": dict(self.outcomes),
            "sent": self.sent,
            "load_s": load_s,
            "gateway_exit_code": exit_code,
            "gateway_exit_s": exit_s,
            "ledger_rows_final": _ledger_rows(self.db),
            "log_errors": len(re.findall(r" (?:ERROR|CRITICAL) |Traceback", log)),
            "log_warnings": log.count(" WARNING "),
        }


# --- verdicts and report ---------------------------------------------------------------------


def _verdicts(run: dict[str, Any], warmup: float) -> dict[str, str]:
    samples = run["samples"]
    load = [s for s in samples if s["phase"] == "load" and s["t"] >= warmup]
    base, after, k = samples[0], samples[-1], len(load) // 3
    out: dict[str, str] = {}
    for key, label in (("rss_mb", "RSS MB"), ("fds", "open fds"), ("tasks", "asyncio tasks")):
        mid = [s[key] for s in load[k : 2 * k] if s[key] is not None]
        last = [s[key] for s in load[2 * k :] if s[key] is not None]
        if not mid or not last:
            out[label] = "not measured (too few samples)"
            continue
        band = 5.0 if key == "rss_mb" else max(5.0, 0.2 * mean(mid))
        delta = mean(last) - mean(mid)
        out[label] = (
            f"**{'grows' if delta > band else 'flat'}**: mean of the middle third {mean(mid):.1f},"
            f" of the last third {mean(last):.1f} ({delta:+.1f}; tolerance +{band:.1f})"
        )
        if key != "rss_mb" and base[key] is not None and after[key] is not None:
            back = after[key] <= base[key] + (4 if key == "fds" else 2)
            out[label] += (
                f"; idle: {base[key]:.0f} before the load, {after[key]:.0f} at {after['t']:g} s"
                f" ({'back in' if back else '**NOT back** in'} the band of +4 fds / +2 tasks)"
            )
    counts = Counter[str]()
    for name, n in run["outcomes"].items():
        outcome = name.split(": ", 1)[1]
        unsent = outcome.startswith(("skipped", "client error"))
        refused = outcome.split(" ", 1)[-1] in REFUSALS
        counts["refused" if refused else "unsent" if unsent else "other"] += n
    expected = run["sent"] - counts["refused"] - counts["unsent"]
    rows = run["ledger_rows_final"] or 0
    ok = abs(rows - expected) <= max(5, 0.005 * expected)
    out["ledger rows"] = (
        f"**{'grows with requests' if ok else 'does NOT match the requests'}**: {rows:,} rows after"
        f" shutdown for {run['sent']:,} requests sent - {counts['refused']:,} refusals (client"
        f" rate limit, budget: not ledger rows by design) - {counts['unsent']:,} never sent ="
        f" {expected:,} expected ({rows - expected:+,})"
    )
    return out


def _markdown(run: dict[str, Any], args: argparse.Namespace, verdicts: dict[str, str]) -> str:
    git = ["git", "-C", str(BENCH.parent)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "status", "--porcelain", "src"], capture_output=True, text=True)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "## Soak",
        "",
        f"`.venv/bin/python bench/soak.py --duration {args.duration:g} --rate {args.rate:g}"
        f" --interval {args.interval:g} --warmup {args.warmup:g}` on {when},"
        f" relaygate commit {commit.stdout.strip()}"
        f"{' with uncommitted changes under src/' if dirty.stdout.strip() else ''}."
        f" {run['sent']:,} requests in {run['load_s']:g} s at a fixed open-loop rate"
        f" ({', '.join(f'{w}% {kind}' for w, kind, *_ in MIX)}) through a real `relaygate serve`:"
        " a 3-key pool on the fast mock, an error upstream (500, 429 with retry-after, timeouts,"
        " cut streams, slow answers), a client over its rpm/tpm, a client over its monthly"
        " budget, the ledger on SQLite. Verdicts compare the middle and last thirds of the load"
        f" samples after a {min(args.warmup, args.duration / 3):g} s warm-up.",
        "",
        "| t (s) | phase | RSS MB | fds | tasks | ledger rows | requests sent |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in run["samples"]:
        tasks, rows = s["tasks"], s["ledger_rows"]
        lines.append(
            f"| {s['t']:g} | {s['phase']} | {s['rss_mb']:.1f} | {s['fds']} |"
            f" {'n/a' if tasks is None else f'{tasks:.0f}'} |"
            f" {'n/a' if rows is None else f'{rows:,}'} | {s['sent']:,} |"
        )
    lines += ["", *(f"- {label}: {text}" for label, text in verdicts.items())]
    lines.append(
        f"- SIGTERM: the gateway exited with code {run['gateway_exit_code']} after"
        f" {run['gateway_exit_s']:g} s (-15: uvicorn re-raises the signal after its graceful"
        f" shutdown; None: it had to be killed); its log has {run['log_errors']} errors or"
        f" tracebacks and {run['log_warnings']:,} warnings"
    )
    top = sorted(run["outcomes"].items(), key=lambda x: (x[0].split(":")[0], -x[1]))
    seen = "; ".join(f"{o} {n:,}" for o, n in top)
    lines += ["", f"Outcomes (kind: what the client saw): {seen}."]
    return "\n".join(lines) + "\n"


def _into(path: Path, section: str) -> None:
    start, end = "<!-- soak:start -->", "<!-- soak:end -->"
    block = f"{start}\n{section}{end}\n"
    text = path.read_text() if path.exists() else ""
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    ap.add_argument("--rate", type=float, default=40.0, help="requests per second (open loop)")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds left out of the verdicts")
    ap.add_argument("--out", type=Path, default=BENCH / "results" / "soak.json")
    ap.add_argument("--markdown-into", type=Path, help="put the ## Soak section into this file")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="relaygate-soak-"))
    args.workdir = str(tmp)
    mock_port, err_port, port = free_port(), free_port(), free_port()
    (tmp / "relaygate.yaml").write_text(
        CONFIG.format(
            mock=mock_port,
            err=err_port,
            db=tmp / "soak.db",
            price=PRICE,
            budget_usd=20 * 32 * PRICE / 1e6,
            **KEYS,
        )
    )
    py = sys.executable
    mock_cmd = [py, str(BENCH / "mock_upstream.py"), "--port", str(mock_port)]
    mock = _spawn([*mock_cmd, "--max-seconds", str(args.duration + 600)], tmp / "mock.log", tmp)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp), "ADMIN_SECRET": SECRET}
    serve = ["-m", "relaygate", "serve", "--port", str(port), "--log-level", "warning"]
    gw = _spawn([py, *serve, "--config", "relaygate.yaml"], tmp / "gateway.log", tmp, env)
    print(f"soak: gateway pid {gw.pid} on :{port}, upstreams :{mock_port} :{err_port}, in {tmp}")
    try:
        run = asyncio.run(Soak(args, gw, port).run(err_port))
    finally:
        _stop(gw)
        _stop(mock)
    verdicts = _verdicts(run, min(args.warmup, args.duration / 3))
    run.update(verdicts=verdicts, args={k: str(v) for k, v in vars(args).items()})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(run, indent=1))
    section = _markdown(run, args, verdicts)
    print(section)
    if args.markdown_into:
        _into(args.markdown_into, section)
    print(f"soak: samples in {args.out}; gateway log in {tmp}")


if __name__ == "__main__":
    main()
