"""Rich tables for the CLI: never a key, only key ids."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from relaygate.config.model import Config


def print_config(cfg: Config) -> None:
    from relaygate.gateway import build_providers
    from relaygate.keys.pool import key_id

    console = Console()
    console.print(f"[bold]config[/bold]: {cfg.source}")
    providers = build_providers(cfg)
    table = Table(title="providers")
    for col in ("name", "type", "base url", "keys (ids)", "strategy", "models"):
        table.add_column(col)
    for name, p in providers.items():
        ids = ", ".join(key_id(name, k.key, k.label) for k in p.config.keys) or "(none)"
        table.add_row(
            name,
            p.meta.kind,
            p.base_url or "(built in)",
            ids,
            p.config.key_strategy,
            ", ".join(p.models()),
        )
    console.print(table)
    routing = Table(title="routing")
    routing.add_column("what")
    routing.add_column("value")
    routing.add_row("priority", ", ".join(cfg.routing.priority) or "(providers in order)")
    for prov, model in cfg.routing.default_models.items():
        routing.add_row(f"default model of {prov}", model)
    for alias, target in cfg.routing.aliases.items():
        routing.add_row(f"alias {alias}", target)
    for group, members in cfg.routing.groups.items():
        routing.add_row(f"group {group}", " -> ".join(members))
    console.print(routing)
    clients = Table(title="static clients")
    for col in ("name", "rpm", "tpm", "monthly budget", "models"):
        clients.add_column(col)
    for c in cfg.clients:
        clients.add_row(
            c.name,
            str(c.rpm or "-"),
            str(c.tpm or "-"),
            str(c.monthly_budget_usd or "-"),
            ", ".join(c.models or []) or "all",
        )
    console.print(clients)
    console.print(f"admin API: {'on' if cfg.admin_secret else 'off (set ADMIN_SECRET)'}")
