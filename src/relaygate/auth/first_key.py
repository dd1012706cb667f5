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


async def ensure_first_client_key(
    gw: Gateway, *, announce: Callable[[str], None] | None = None
) -> str | None:
    """After the gateway started (its issued clients are loaded). Replicas starting together
    on one store create one key between them: the one that claims it first."""
    if not gw.persist or gw.clients.has_any():
        return None
    if not await gw.state.claims.claim("first-client-key", 100 * 365 * 86400.0):
        return None
    key, _ = await gw.clients.issue("default")
    (announce or _print)(_box(key))
    return key


def _print(text: str) -> None:
    print(text, file=sys.stdout, flush=True)
