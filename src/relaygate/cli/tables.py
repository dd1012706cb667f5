"""Tables for the CLI: never a key, only key ids; never a value cut short. On a terminal wide
enough, a table; on a narrow one, each row as a block of `column: value` lines; without a
terminal (piped), tab-separated lines a script can read."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from relaygate.config.model import Config


def show(
    console: Console, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]
) -> None:
    if not console.is_terminal:
        lines = [f"# {title}", *("\t".join(line) for line in (columns, *rows))]
        console.file.write("\n".join(lines) + "\n")  # as is: rich would expand the tabs
        return
    widths = [max(len(str(c)) for c in col) for col in zip(columns, *rows, strict=True)]
    if sum(widths) + 3 * len(columns) + 1 <= console.width:
        table = Table(title=title)
        for col in columns:
            table.add_column(col, no_wrap=True, overflow="ignore")
        for row in rows:
            table.add_row(*row)
        console.print(table, markup=False, highlight=False)
        return
    console.print(title, markup=False, highlight=False, soft_wrap=True)
    for row in rows:
        console.print("", soft_wrap=True)
        for col, value in zip(columns, row, strict=True):
            console.print(f"{col}: {value}", markup=False, highlight=False, soft_wrap=True)


def print_config(cfg: Config) -> None:
    from relaygate.gateway import build_providers
    from relaygate.keys.pool import key_id

    console = Console()
    console.print(f"config: {cfg.source}", markup=False, highlight=False, soft_wrap=True)
    providers = build_providers(cfg)
    rows = []
    for name, p in providers.items():
        ids = ", ".join(key_id(name, k.key, k.label) for k in p.config.keys) or "(none)"
        rows.append(
            [
                name,
                p.meta.kind,
                p.base_url or "(built in)",
                ids,
                p.config.key_strategy,
                ", ".join(p.models()),
            ]
        )
    show(
        console, "providers", ("name", "type", "base url", "keys (ids)", "strategy", "models"), rows
    )
    routing = [["priority", ", ".join(cfg.routing.priority) or "(providers in order)"]]
    routing += [[f"default model of {p}", m] for p, m in cfg.routing.default_models.items()]
    routing += [[f"alias {a}", t] for a, t in cfg.routing.aliases.items()]
    routing += [[f"group {g}", " -> ".join(m)] for g, m in cfg.routing.groups.items()]
    show(console, "routing", ("what", "value"), routing)
    clients = [
        [
            c.name,
            "key" if c.key else "sha256",
            str(c.rpm or "-"),
            str(c.tpm or "-"),
            str(c.monthly_budget_usd or "-"),
            ", ".join(c.models or []) or "all",
        ]
        for c in cfg.clients
    ]
    columns = ("name", "by", "rpm", "tpm", "monthly budget", "models")
    show(console, "static clients", columns, clients)
    admin = "on" if cfg.admin_secret else "off (set ADMIN_SECRET)"
    console.print(f"admin API: {admin}", markup=False, highlight=False, soft_wrap=True)
    if cfg.keys_file:
        console.print(f"keys file: {cfg.keys_file}", markup=False, highlight=False, soft_wrap=True)
