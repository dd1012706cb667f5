"""The gateway as an ASGI app for servers that import one (SPEC §11):

    uvicorn relaygate.asgi:app --host 0.0.0.0 --port 8000
    gunicorn relaygate.asgi:app -k uvicorn.workers.UvicornWorker

Configured as `relaygate serve` is (the same loader: `RELAYGATE_CONFIG` or `./relaygate.yaml`,
`.env`, the process environment) and the same app object; its lifespan starts and stops the
Gateway. Host, port and workers belong to the server here, not to the config. A bad config ends
the import with the CLI's one-line `config error: ...` on stderr and exit code 2, no traceback.
Several workers need `REDIS_URL`: refused here when `WEB_CONCURRENCY` (read by uvicorn and
gunicorn) asks for more than one; a worker count given on the command line cannot be seen.
Not covered by this entry point: the bounded request heads and the shutdown drain of
`relaygate serve`'s own server (relaygate.http.server)."""

from __future__ import annotations

import multiprocessing
import os
import sys

from fastapi import FastAPI

from relaygate.errors import ConfigError

__all__ = ["app"]


def _build() -> FastAPI:
    from relaygate._logging import setup_logging
    from relaygate.cli.main import _config_failure
    from relaygate.config.load import load_config
    from relaygate.gateway import Gateway
    from relaygate.http.app import create_app

    source: str | None = None
    try:
        cfg = load_config()
        source = cfg.source
        gw = Gateway(cfg)
    except ConfigError as exc:
        raise SystemExit(_config_failure(exc, source).exit_code) from None
    workers = os.environ.get("WEB_CONCURRENCY", "1").strip()
    if workers.isdigit() and int(workers) > 1 and not cfg.redis_url:
        print(
            f"WEB_CONCURRENCY={int(workers)} runs {int(workers)} workers, which need shared state: "
            "set REDIS_URL, or run one worker.",
            file=sys.stderr,
            flush=True,
        )
        # 3 in a server's worker process: uvicorn and gunicorn stop on it instead of starting the
        # worker again (forever); a plain import keeps the CLI's code for a refused start
        raise SystemExit(3 if multiprocessing.parent_process() is not None else 2)
    setup_logging(cfg.server.log_level, json=cfg.server.log_json, redactor=gw.redact)
    return create_app(gateway=gw)


app = _build()
