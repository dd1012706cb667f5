"""The cache key of a request (SPEC §7b): a SHA-256 over the client's id (left out when the cache
is shared), the front door's route, the model named by the path (Gemini), and the request body in
canonical form (keys sorted, compact JSON) without the fields that do not change the answer
(`stream`, `stream_options`, `user`, `metadata`). Door-generic: any route whose answer depends
only on its JSON body can use it (embeddings included). The key holds no secret: the client is
named by its id, never its key."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

IGNORED = frozenset(("stream", "stream_options", "user", "metadata"))
VERSION = b"rg-cache-1"  # changes whenever what an entry holds changes


def canonical(body: Mapping[str, Any]) -> bytes:
    """The body's canonical bytes: sorted keys, compact, the ignored top-level fields dropped."""
    kept = {k: v for k, v in body.items() if k not in IGNORED}
    return orjson.dumps(kept, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


def cache_key(
    *, route: str, body: Mapping[str, Any], client_id: str | None, model: str | None = None
) -> str:
    """The hex key of a request; `client_id` None means a shared entry."""
    digest = hashlib.sha256(VERSION)
    who = "shared" if client_id is None else "client:" + client_id
    for part in (who, route, model or ""):
        digest.update(b"\0" + part.encode("utf-8", "surrogatepass"))
    digest.update(b"\0")
    digest.update(canonical(body))
    return digest.hexdigest()
