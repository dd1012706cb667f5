"""`relaygate keys ...`, `relaygate current-key` and `relaygate report`: thin commands over the
store the server uses (so a revocation here takes effect in a running server within a second)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from rich.console import Console
from rich.table import Table

from relaygate.auth.clients import ClientRegistry, public
from relaygate.auth.weekly import current_key_info
from relaygate.cli.tables import show
from relaygate.config.model import Config
from relaygate.errors import ConfigError
from relaygate.keys import policy
from relaygate.lifecycle import state_settings
from relaygate.state import State, open_state
from relaygate.state.records import ClientRecord
from relaygate.usage.notifier import Delivery
from relaygate.usage.reports import usage_report

T = TypeVar("T")


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts)) if ts else "-"


def with_state(config: Config, work: Callable[[State], Awaitable[T]]) -> T:
    """Run `work` on the state the server uses (the same DATABASE_URL and REDIS_URL)."""

    async def go() -> T:
        state = open_state(state_settings(config), policy.apply)
        try:
            return await work(state)
        finally:
            await state.aclose()

    return asyncio.run(go())


def create_key(
    config: Config,
    name: str,
    *,
    rpm: int | None,
    tpm: int | None,
    budget: float | None,
    models: list[str] | None,
) -> None:
    async def work(state: State) -> tuple[str, dict[str, Any]]:
        registry = ClientRegistry(config, state.clients)
        return await registry.issue(
            name, rpm=rpm, tpm=tpm, monthly_budget_usd=budget, models=models
        )

    key, client = with_state(config, work)
    console = Console()
    console.print(f"client [bold]{client['name']}[/bold] (id {client['id']}): its key, shown once:")
    console.print(key, markup=False, highlight=False, soft_wrap=True)


def list_keys(config: Config) -> None:
    rows = with_state(config, lambda state: state.clients.list())
    columns = ("id", "name", "key", "rpm", "tpm", "budget $/month", "models", "created", "revoked")
    table = [
        [
            r.id,
            r.name,
            r.key_hint,
            str(r.rpm or "-"),
            str(r.tpm or "-"),
            str(r.monthly_budget_usd or "-"),
            ", ".join(r.models or []) or "all",
            _when(r.created_at),
            _when(r.revoked_at),
        ]
        for r in rows
    ]
    show(Console(), "issued client keys", columns, table)


def revoke_key(config: Config, ident: str) -> str:
    """Revoke the active client with this id, else the one active client with this name;
    returns its id. Raises LookupError saying why when there is none or the name is shared."""

    async def work(state: State) -> str:
        active = await state.clients.list(include_revoked=False)
        chosen = [r for r in active if r.id == ident] or [r for r in active if r.name == ident]
        if not chosen:
            raise LookupError(f"no active client with id or name {ident!r}")
        if len(chosen) > 1:
            ids = ", ".join(r.id for r in chosen)
            raise LookupError(
                f"{len(chosen)} active clients are named {ident!r} (ids {ids}): "
                "revoke one by its id"
            )
        await state.clients.revoke(chosen[0].id)
        return chosen[0].id

    return with_state(config, work)


def import_key(
    config: Config,
    name: str,
    sha256: str,
    *,
    rpm: int | None,
    tpm: int | None,
    budget: float | None,
    models: list[str] | None,
) -> dict[str, Any]:
    """A client whose key is known only by its SHA-256 (kept by an earlier gateway): that key
    becomes valid without anyone here knowing it."""
    digest = sha256.strip().lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise LookupError("--sha256 must be 64 hexadecimal digits (the SHA-256 of the key)")

    async def work(state: State) -> dict[str, Any]:
        record = ClientRecord(
            id=uuid.uuid4().hex[:12],
            name=name,
            key_hash=digest,
            key_hint=f"sha256:{digest[:8]}",
            created_at=time.time(),
            rpm=rpm,
            tpm=tpm,
            monthly_budget_usd=budget,
            models=tuple(models) if models is not None else None,
        )
        try:
            await state.clients.insert(record)
        except ValueError:
            raise LookupError("a client with this key exists already") from None
        return public(record)

    return with_state(config, work)


def print_current_key(config: Config) -> None:
    assert config.admin_secret
    info = current_key_info(config.admin_secret, datetime.now(UTC))
    console = Console()
    console.print(info["api_key"], markup=False, highlight=False)
    console.print(f"valid until {info['expiry']} ({info['days_remaining']} days)")


def print_report(
    config: Config, *, by: str, day: str | None, month: str | None, send: bool = False
) -> bool:
    """Print the table; with `send`, also send the report. False when a delivery failed."""
    report = with_state(
        config, lambda state: usage_report(state.ledger, by=by, day=day, month=month)
    )
    table = Table(title=f"usage {report['period']} by {by}")
    for col in (
        "name",
        "requests",
        "errors",
        "prompt tok",
        "completion tok",
        "cost $",
        "avg latency ms",
    ):
        table.add_column(col, justify="left" if col == "name" else "right")
    for r in report["rows"]:
        table.add_row(
            str(r["name"]),
            str(r["requests"]),
            str(r["errors"]),
            str(r["prompt_tokens"]),
            str(r["completion_tokens"]),
            f"{r['cost_usd']:.6f}",
            str(r["avg_latency_ms"]),
        )
    t = report["totals"]
    table.add_section()
    table.add_row(
        "total",
        str(t["requests"]),
        str(t["errors"]),
        str(t["prompt_tokens"]),
        str(t["completion_tokens"]),
        f"{t['cost_usd']:.6f}",
        "",
    )
    Console().print(table)
    if not send:
        return True
    sent = send_report(config, day=day, month=month)
    for d in sent:
        note = "sent" if d.ok else f"failed ({d.detail})"
        Console().print(f"report to {d.destination}: {note}", markup=False, highlight=False)
    return all(d.ok for d in sent)


def send_report(config: Config, *, day: str | None, month: str | None) -> list[Delivery]:
    """`relaygate report --send`: one report, from the database, without a running server."""
    import aiohttp

    from relaygate.usage.notifier import build_report, deliver, reports_config

    cfg = reports_config(config)
    if not cfg.destinations:
        raise ConfigError(
            "reports: nowhere to send: set reports.telegram_bot_token and "
            "reports.telegram_chat_id, or reports.webhook_url"
        )

    async def work(state: State) -> list[Delivery]:
        report = await build_report(state.ledger, day=day, month=month, top=cfg.top)
        async with aiohttp.ClientSession() as session:
            return await deliver(report, cfg, session)

    return with_state(config, work)
