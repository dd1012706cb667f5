"""`relaygate keys ...`, `relaygate current-key` and `relaygate report`: thin commands over the
store the server uses (so a revocation here takes effect in a running server within a second)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table

from relaygate.auth.clients import ClientRegistry
from relaygate.auth.weekly import current_key_info
from relaygate.config.model import Config
from relaygate.storage.sqlite import open_store
from relaygate.usage.reports import usage_report


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts)) if ts else "-"


def create_key(
    config: Config,
    name: str,
    *,
    rpm: int | None,
    tpm: int | None,
    budget: float | None,
    models: list[str] | None,
) -> None:
    store = open_store(config.database_url)
    try:
        registry = ClientRegistry(config, store)
        key, client = registry.issue(
            name, rpm=rpm, tpm=tpm, monthly_budget_usd=budget, models=models
        )
    finally:
        store.close()
    console = Console()
    console.print(f"client [bold]{client['name']}[/bold] (id {client['id']}): its key, shown once:")
    console.print(key, markup=False, highlight=False, soft_wrap=True)


def list_keys(config: Config) -> None:
    store = open_store(config.database_url)
    try:
        rows = store.list_clients()
    finally:
        store.close()
    table = Table(title="issued client keys")
    for col in (
        "id",
        "name",
        "key",
        "rpm",
        "tpm",
        "budget $/month",
        "models",
        "created",
        "revoked",
    ):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["id"],
            r["name"],
            r["key_hint"],
            str(r["rpm"] or "-"),
            str(r["tpm"] or "-"),
            str(r["monthly_budget_usd"] or "-"),
            ", ".join(r["models"] or []) or "all",
            _when(r["created_at"]),
            _when(r["revoked_at"]),
        )
    Console().print(table)


def revoke_key(config: Config, client_id: str) -> bool:
    store = open_store(config.database_url)
    try:
        return store.revoke_client(client_id)
    finally:
        store.close()


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
    store = open_store(config.database_url)
    try:
        report = usage_report(store, by=by, day=day, month=month)
    finally:
        store.close()
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
    from relaygate.usage.notifier import send_now

    sent = send_now(config, day=day, month=month)
    for d in sent:
        note = "sent" if d.ok else f"failed ({d.detail})"
        Console().print(f"report to {d.destination}: {note}", markup=False, highlight=False)
    return all(d.ok for d in sent)
