"""`relaygate serve --workers N`: N processes that serve one listening socket, bound here once
and handed to each (the kernel spreads the connections). Each worker is a whole gateway (its own
Gateway and GatewayServer: bounded heads, the shutdown drain); they behave as one because their
state lives in Redis (checked before this runs). The parent only watches: SIGTERM or SIGINT is
passed on to every worker, a worker that dies is started again, and the parent exits when they
have all stopped."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import time
from multiprocessing.context import SpawnProcess
from typing import Any

log = logging.getLogger("relaygate.server")
RESTART_LIMIT = 5  # a worker that keeps dying (a bad port, a crash at start) is not restarted


def _worker(config_path: str | None, overrides: dict[str, Any], sock: socket.socket) -> None:
    from relaygate._logging import setup_logging
    from relaygate.config.load import load_config
    from relaygate.gateway import Gateway
    from relaygate.http.app import create_app
    from relaygate.http.server import GatewayServer, server_config

    cfg = load_config(config_path, overrides=overrides)
    gw = Gateway(cfg)
    setup_logging(cfg.server.log_level, json=cfg.server.log_json, redactor=gw.redact)
    grace = cfg.server.shutdown_grace_s
    config = server_config(
        create_app(gateway=gw), grace_s=grace, log_level=cfg.server.log_level.lower()
    )
    GatewayServer(config, gw, grace).run(sockets=[sock])


def serve_workers(
    workers: int, host: str, port: int, config_path: str | None, overrides: dict[str, Any]
) -> int:
    """Run `workers` processes on one socket until a signal stops them; the exit code."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        log.error("cannot listen on %s:%d (%s)", host, port, exc.strerror or type(exc).__name__)
        return 3
    sock.listen(2048)
    sock.set_inheritable(True)
    context = multiprocessing.get_context("spawn")
    stopping: list[int] = []

    def start() -> SpawnProcess:
        process = context.Process(
            target=_worker, args=(config_path, overrides, sock), name="relaygate-worker"
        )
        process.start()
        return process

    def on_signal(signum: int, frame: object) -> None:
        stopping.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    procs = [start() for _ in range(workers)]
    log.info("relaygate: %d workers on %s:%d", workers, host, port)
    restarts = 0
    try:
        while not stopping:
            time.sleep(0.2)
            for i, proc in enumerate(procs):
                if proc.is_alive() or stopping:
                    continue
                if restarts >= RESTART_LIMIT:
                    log.error("workers keep stopping (exit code %s): giving up", proc.exitcode)
                    stopping.append(signal.SIGTERM)
                    break
                restarts += 1
                log.warning("worker %d stopped (exit code %s): starting it again", i, proc.exitcode)
                procs[i] = start()
    finally:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                with_signal = stopping[0] if stopping else signal.SIGTERM
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, with_signal)
        for proc in procs:
            proc.join()
        for s, handler in previous.items():
            signal.signal(s, handler)
        sock.close()
    return 0 if restarts < RESTART_LIMIT else 1
