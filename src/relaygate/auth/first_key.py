"""First start with no client key of any kind: create one, show it once, store only its hash."""

from __future__ import annotations

import sys
from collections.abc import Callable

from relaygate.gateway import Gateway


def _box(key: str) -> str:
    lines = [
        "relaygate: no client key was configured, so one was created for you.",
        "It is shown only this once (only its hash is stored):",
        "",
        f"    {key}",
        "",
        "Send it as 'Authorization: Bearer <key>'.",
        "Create more with: relaygate keys create --name APP",
    ]
    width = max(len(line) for line in lines) + 2
    top = "+" + "-" * width + "+"
    body = [f"| {line.ljust(width - 1)}|" for line in lines]
    return "\n".join([top, *body, top])


def ensure_first_client_key(
    gw: Gateway, *, announce: Callable[[str], None] | None = None
) -> str | None:
    if gw.store is None or gw.clients.has_any():
        return None
    key, _ = gw.clients.issue("default")
    (announce or _print)(_box(key))
    return key


def _print(text: str) -> None:
    print(text, file=sys.stdout, flush=True)
