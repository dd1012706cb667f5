"""Process helpers for the bench: start pinned servers, wait for readiness, read RSS and CPU time
from /proc, stop exactly the processes the bench started (by pid / own process group); a private
redis-server (RedisServer) is one of them, ready when it answers PING; the HTTP/2 mock over TLS
(TlsServer) another, ready when it answers its health path over HTTPS (its own certificate as
the CA)."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(port: int, path: str, timeout: float = 1.0) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def https_get(port: int, path: str, cafile: str, timeout: float = 1.0) -> tuple[int, bytes] | None:
    """GET over HTTPS (HTTP/1.1) to 127.0.0.1, `cafile` trusted: (status, body), or None."""
    context = ssl.create_default_context(cafile=cafile)
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=context)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except OSError:  # refused, reset, TLS (ssl.SSLError is an OSError)
        return None
    finally:
        conn.close()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def tree(pid: int) -> list[int]:
    """pid and its descendants (LiteLLM may run its server in a child)."""
    out: list[int] = []
    todo = [pid]
    while todo and len(out) < 256:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def status_kb(pid: int, field_name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mb(pid: int) -> float:
    return sum(status_kb(p, "VmRSS") for p in tree(pid)) / 1024


def hwm_mb(pid: int) -> float:
    return sum(status_kb(p, "VmHWM") for p in tree(pid)) / 1024


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    return total


@dataclass
class Server:
    """One server process started by the bench, pinned with taskset."""

    name: str
    argv: list[str]
    port: int
    health: str
    cpu: int
    cwd: Path
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    startup_s: float | None = None
    command: str = field(default="")

    def start(self) -> None:
        full = ["taskset", "-c", str(self.cpu), *self.argv]
        self.command = " ".join(full)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = self.log.open("ab")
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(
            full,
            cwd=self.cwd,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()

    def ready(self) -> bool:
        """Whether it answers: a 200 on the health path (a Redis server: a PONG)."""
        return http_status(self.port, self.health, timeout=0.5) == 200

    ready_timeout_s = 60.0

    def wait_ready(self, timeout: float | None = None) -> float:
        """Seconds from the start to the first time it is `ready` (within `ready_timeout_s`)."""
        assert self.proc is not None
        timeout = self.ready_timeout_s if timeout is None else timeout
        deadline = self.started_at + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}; see {self.log}"
                )
            if self.ready():
                self.startup_s = time.perf_counter() - self.started_at
                return self.startup_s
            time.sleep(0.005)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s; see {self.log}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGINT, 8.0), (signal.SIGTERM, 4.0), (signal.SIGKILL, 4.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)  # the group this bench created for it, nothing else
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def wait_idle(self, *, below: float = 0.05, timeout: float = 20.0) -> None:
        """Wait until the server uses less than `below` of a core over 0.3 s (backlog drained)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            before = cpu_seconds(self.pid)
            time.sleep(0.3)
            if (cpu_seconds(self.pid) - before) / 0.3 < below:
                return


def redis_ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer(Server):
    """A private redis-server for one run (no persistence: `--save ''`, `--appendonly no`),
    never the system one: its own port, started and stopped by the bench."""

    @classmethod
    def make(cls, name: str, cpu: int, work: Path, env: dict[str, str]) -> RedisServer:
        port = free_port()
        home = work / name
        home.mkdir(parents=True, exist_ok=True)
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(home), "--daemonize", "no"]
        return cls(name, argv, port, "", cpu, home, env, work / f"{name}.log")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    ready_timeout_s = 30.0

    def ready(self) -> bool:
        return redis_ping(self.port)


@dataclass
class TlsServer(Server):
    """A server answering over TLS only (bench/h2_upstream.py): ready when its health path
    answers 200 over HTTPS, `cafile` (its self-signed certificate) trusted."""

    cafile: str = ""

    def ready(self) -> bool:
        got = https_get(self.port, self.health, self.cafile, timeout=0.5)
        return got is not None and got[0] == 200

    def get(self, path: str) -> bytes | None:
        got = https_get(self.port, path, self.cafile, timeout=5.0)
        return got[1] if got is not None and got[0] == 200 else None


class RssSampler:
    """Samples the RSS of a process tree every `every` seconds in a thread; keeps the peak."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        self.pid, self.every = pid, every
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, rss_mb(self.pid))
            self._stop.wait(self.every)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
