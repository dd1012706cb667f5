"""The client keys file (one key a line, `#` comments; default keys/forwarder_api_keys.txt): read
at start by the config, appended to by `relaygate generate-key`, and watched while the server
runs (its modification time polled every half second in the background), so a key added to it
is accepted within a second and a key taken out of it stops working as fast."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from relaygate.config.model import MIN_CLIENT_KEY

log = logging.getLogger("relaygate.auth")
POLL_S = 0.5
MAX_FILE_BYTES = 4 * 1024 * 1024  # a keys file larger than this is not read


def read_keys(path: Path) -> list[str]:
    """The keys in the file; lines too short to be a key are skipped (and said so once)."""
    if path.stat().st_size > MAX_FILE_BYTES:
        raise OSError(f"larger than {MAX_FILE_BYTES} bytes")
    keys = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        key = line.strip()
        if not key or key.startswith("#"):
            continue
        if len(key) < MIN_CLIENT_KEY:
            log.warning(
                "%s: line %d is not a key (under %d characters)", path, number, MIN_CLIENT_KEY
            )
            continue
        keys.append(key)
    return list(dict.fromkeys(keys))


def append_key(path: Path, key: str) -> None:
    """Add one key on a line of its own; the folder and the file (mode 600) are created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as out:
        if path.stat().st_size > 0:
            with path.open("rb") as current:
                current.seek(-1, os.SEEK_END)
                if current.read(1) != b"\n":
                    out.write("\n")
        out.write(key + "\n")


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size


async def watch(path: Path, apply: Callable[[list[str]], None], poll_s: float = POLL_S) -> None:
    """Call `apply` with the file's keys whenever it changes (a missing file: no keys). A file
    that cannot be read keeps the keys it had."""
    last = _stamp(path)
    while True:
        await asyncio.sleep(poll_s)
        stamp = _stamp(path)
        if stamp == last:
            continue
        last = stamp
        if stamp is None:
            apply([])
            continue
        try:
            keys = await asyncio.to_thread(read_keys, path)
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("%s: cannot read the keys file (%s); keeping its keys", path, exc)
            continue
        apply(keys)
        log.info("%s: %d client keys", path, len(keys))
