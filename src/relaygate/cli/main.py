"""`relaygate` commands (SPEC §10). Each command imports what it needs when it runs."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer

from relaygate.errors import ConfigError

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="relaygate: a self-hosted LLM API gateway."
)
config_app = typer.Typer(no_args_is_help=True, help="Inspect the configuration.")
keys_app = typer.Typer(no_args_is_help=True, help="Issue, list and revoke client keys.")
upstream_app = typer.Typer(no_args_is_help=True, help="Upstream provider keys.")
app.add_typer(config_app, name="config")
app.add_typer(keys_app, name="keys")
app.add_typer(upstream_app, name="upstream")

ConfigOpt = Annotated[str | None, typer.Option("--config", "-c", help="YAML config file.")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code)


def _config_failure(exc: ConfigError, source: str | None = None) -> typer.Exit:
    """One line on stderr naming the field and, when the message does not already, the file."""
    message = " ".join(str(exc).split())
    if source and source != "defaults" and source not in message:
        message = f"{source}: {message}"
    return _fail(f"config error: {message}")


def _load(path: str | None, overrides: dict[str, Any] | None = None) -> Any:
    from relaygate.config.load import load_config

    try:
        return load_config(path, overrides=overrides)
    except ConfigError as exc:
        raise _config_failure(exc) from None


def _serve(
    host: str | None,
    port: int | None,
    workers: int | None,
    reload: bool,
    log_level: str | None,
    config: str | None,
) -> None:
    server: dict[str, Any] = {
        "host": host,
        "port": port,
        "workers": workers,
        "log_level": log_level,
        "reload": reload or None,
    }
    cfg = _load(config, {"server": {k: v for k, v in server.items() if v is not None}})
    if cfg.server.workers > 1 and not cfg.redis_url:
        raise _fail(
            f"--workers {cfg.server.workers} needs the workers to share their limits, budgets "
            "and key states: set REDIS_URL=redis://host:6379/0, or run one worker."
        )
    import uvicorn

    from relaygate._logging import Redactor, setup_logging
    from relaygate.gateway import Gateway
    from relaygate.http.app import create_app
    from relaygate.http.server import GatewayServer, server_config

    common: dict[str, Any] = {
        "host": cfg.server.host,
        "port": cfg.server.port,
        "log_level": cfg.server.log_level.lower(),
        "access_log": False,
        "lifespan": "on",
        "log_config": None,
        "timeout_graceful_shutdown": int(cfg.server.shutdown_grace_s) + 5,
        "proxy_headers": False,
    }
    if cfg.server.reload:  # development: uvicorn re-imports the app factory on every change
        if config:
            os.environ["RELAYGATE_CONFIG"] = config
        uvicorn.run("relaygate.http.app:app_from_env", factory=True, reload=True, **common)
        return
    # set before the gateway is built, so what it logs then (a `tls.verify: false` warning)
    # comes out in the set format
    setup_logging(cfg.server.log_level, json=cfg.server.log_json, redactor=Redactor(cfg.secrets()))
    if cfg.server.workers > 1:
        from relaygate.http.workers import serve_workers

        overrides = {"server": {k: v for k, v in server.items() if v is not None}}
        code = serve_workers(
            cfg.server.workers, cfg.server.host, cfg.server.port, config, overrides
        )
        raise typer.Exit(code)
    try:
        gw = Gateway(cfg)
    except ConfigError as exc:
        raise _config_failure(exc, cfg.source) from None
    setup_logging(cfg.server.log_level, json=cfg.server.log_json, redactor=gw.redact)
    application = create_app(gateway=gw)
    grace = cfg.server.shutdown_grace_s
    http_server = GatewayServer(
        server_config(
            application,
            grace_s=grace,
            host=cfg.server.host,
            port=cfg.server.port,
            log_level=cfg.server.log_level.lower(),
        ),
        gw,
        grace,
    )
    http_server.run()
    if not http_server.started:  # the port was taken, or start-up failed: uvicorn said why
        raise typer.Exit(3)


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default $PORT or 8000).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (> 1 needs Redis).")] = None,
    reload: Annotated[bool, typer.Option(help="Reload on code changes (development).")] = False,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Start the gateway (OpenAI-compatible HTTP server)."""
    _serve(host, port, workers, reload, log_level, config)


app.command("serve")(serve)
app.command("run-server", help="Alias of `serve`: start the gateway.")(serve)


@app.command()
def call(
    prompt: Annotated[str, typer.Argument(help="What to ask.")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model or alias.")] = None,
    system: Annotated[str | None, typer.Option("--system", "-s", help="System prompt.")] = None,
    temperature: Annotated[
        float | None, typer.Option("--temperature", "--temp", "-t", help="Sampling temperature.")
    ] = None,
    max_tok: Annotated[int | None, typer.Option("--max-tok", help="Max completion tokens.")] = None,
    key: Annotated[
        str | None,
        typer.Option(
            "--key",
            "-k",
            help="Client key (else $RELAYGATE_API_KEY, $FORWARDER_KEY or $PROXY_API_KEY, "
            "also read from .env).",
        ),
    ] = None,
    server: Annotated[
        str, typer.Option("--server", help="Gateway URL ($RELAYGATE_URL, else port $PORT).")
    ] = "",
) -> None:
    """Send PROMPT to a running gateway and stream the answer to the terminal."""
    from relaygate.cli.call import run_call
    from relaygate.config.load import merged_environ

    env = merged_environ()
    for name in ("RELAYGATE_API_KEY", "FORWARDER_KEY", "PROXY_API_KEY"):
        key = key or env.get(name) or None
    port = env.get("PORT") or "8000"
    url = server or env.get("RELAYGATE_URL") or f"http://127.0.0.1:{port}"
    code = run_call(
        url, key, prompt, model=model, system=system, temperature=temperature, max_tokens=max_tok
    )
    raise typer.Exit(code)


@app.command("generate-key")
def generate_key_cmd(
    length: Annotated[int, typer.Option(help="Characters after the prefix.")] = 43,
    prefix: Annotated[str, typer.Option(help="Key prefix.")] = "rg-",
    keys_file: Annotated[
        str | None,
        typer.Option(
            "--keys-file",
            help="Append it here (default $RELAYGATE_KEYS_FILE, else keys/forwarder_api_keys.txt).",
        ),
    ] = None,
    print_only: Annotated[
        bool, typer.Option("--print-only", help="Only print it; do not add it to the file.")
    ] = False,
) -> None:
    """Print a new client key and append it to the keys file (a running server accepts it
    within a second)."""
    from pathlib import Path

    from relaygate.auth.clients import generate_key
    from relaygate.auth.keys_file import append_key
    from relaygate.config.load import keys_file_path, merged_environ

    if length < 16:
        raise _fail("--length must be at least 16")
    key = generate_key(prefix, length)
    typer.echo(key)
    if print_only:
        return
    path = keys_file_path(merged_environ(), keys_file, Path.cwd())
    try:
        append_key(path, key)
    except OSError as exc:
        raise _fail(f"{path}: cannot write the keys file ({exc.strerror or exc})", 1) from None
    typer.echo(f"added to {path}", err=True)


@config_app.command("check")
def config_check(config: ConfigOpt = None) -> None:
    """Validate the configuration and print what it resolves to (key ids only)."""
    from relaygate.cli.tables import print_config

    cfg = _load(config)
    try:
        print_config(cfg)
    except ConfigError as exc:
        raise _config_failure(exc, cfg.source) from None


@upstream_app.command("check")
def upstream_check(config: ConfigOpt = None) -> None:
    """Test every upstream key with a cheap call; mark rejected keys invalid."""
    from relaygate.cli.upstream import run_check

    raise typer.Exit(run_check(_load(config)))


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="Client name (shown in reports).")],
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute.")] = None,
    budget: Annotated[float | None, typer.Option(help="Monthly budget in USD.")] = None,
    models: Annotated[str | None, typer.Option(help="Allowed models, comma-separated.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Issue a client key: printed once, stored only as a hash."""
    from relaygate.cli.keys import create_key

    allowed = [m.strip() for m in models.split(",") if m.strip()] if models else None
    create_key(_load(config), name, rpm=rpm, tpm=tpm, budget=budget, models=allowed)


@keys_app.command("list")
def keys_list(config: ConfigOpt = None) -> None:
    """List issued client keys (never the keys)."""
    from relaygate.cli.keys import list_keys

    list_keys(_load(config))


@keys_app.command("revoke")
def keys_revoke(
    client: Annotated[str, typer.Argument(help="Client id, or a name only one client has.")],
    config: ConfigOpt = None,
) -> None:
    """Revoke an issued client key (a running server stops accepting it within a second)."""
    from relaygate.cli.keys import revoke_key

    try:
        client_id = revoke_key(_load(config), client)
    except LookupError as exc:
        raise _fail(str(exc.args[0]), 1) from None
    typer.echo(f"revoked {client_id}")


@keys_app.command("import")
def keys_import(
    name: Annotated[str, typer.Option("--name", help="Client name (shown in reports).")],
    sha256: Annotated[str, typer.Option("--sha256", help="The SHA-256 of the key, in hex.")],
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute.")] = None,
    budget: Annotated[float | None, typer.Option(help="Monthly budget in USD.")] = None,
    models: Annotated[str | None, typer.Option(help="Allowed models, comma-separated.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Make a key valid that is known only by its SHA-256 (migrated from another gateway)."""
    from relaygate.cli.keys import import_key

    allowed = [m.strip() for m in models.split(",") if m.strip()] if models else None
    try:
        client = import_key(
            _load(config), name, sha256, rpm=rpm, tpm=tpm, budget=budget, models=allowed
        )
    except LookupError as exc:
        raise _fail(str(exc.args[0]), 1) from None
    typer.echo(f"imported client {client['name']} (id {client['id']})")


@app.command("current-key")
def current_key(config: ConfigOpt = None) -> None:
    """Print this week's rotating client key (needs ADMIN_SECRET)."""
    from relaygate.cli.keys import print_current_key

    cfg = _load(config)
    if not cfg.admin_secret:
        raise _fail("the weekly key derives from ADMIN_SECRET: set it first")
    print_current_key(cfg)


@app.command()
def report(
    day: Annotated[str | None, typer.Option(help="A day, 2026-11-24 (default today, UTC).")] = None,
    month: Annotated[str | None, typer.Option(help="A month, 2026-11.")] = None,
    by: Annotated[str, typer.Option(help="client, provider, model, key or day.")] = "client",
    send: Annotated[
        bool, typer.Option("--send", help="Also send it now to the reports: Telegram / webhook.")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Usage report: requests, tokens, cost, errors and latency."""
    from relaygate.cli.keys import print_report
    from relaygate.errors import RelaygateError

    cfg = _load(config)
    try:
        delivered = print_report(cfg, by=by, day=day, month=month, send=send)
    except RelaygateError as exc:
        raise _fail(exc.message) from None
    except ConfigError as exc:
        raise _config_failure(exc, cfg.source) from None
    if not delivered:
        raise typer.Exit(1)


def main() -> None:
    from relaygate.state import StateUnavailable

    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except (OSError, StateUnavailable) as exc:  # e.g. a database that cannot be reached
        print(f"relaygate: {type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(1)
