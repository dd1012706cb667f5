"""Client keys: static ones from the config and environment, issued ones from the store (stored as
SHA-256 hashes). Lookups are a hash and a dict probe in memory; the store is re-read every second
so a revocation made elsewhere takes effect within a second."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from relaygate.auth.weekly import is_current
from relaygate.config.model import Config
from relaygate.storage.sqlite import SQLiteStore


def _utcnow() -> datetime:
    return datetime.now(UTC)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def static_id(key: str) -> str:
    """A configured key's client id: the same on every start and in every replica, whatever the
    order of the config or the name given (renaming keeps the spend). Derived under its own label
    and cut to 48 bits, so it is not the key's hash and tells nothing about the key."""
    digest = hashlib.sha256(b"relaygate client id\0" + key.encode("utf-8")).hexdigest()
    return f"static-{digest[:12]}"


def generate_key(prefix: str = "rg-", length: int = 43) -> str:
    """`prefix` + `length` URL-safe random characters."""
    body = ""
    while len(body) < length:
        body += secrets.token_urlsafe(length)
    return prefix + body[:length]


@dataclass(frozen=True, slots=True)
class ClientInfo:
    id: str
    name: str
    source: str  # static | issued
    key_hash: str = field(default="", repr=False)
    rpm: int | None = None
    tpm: int | None = None
    monthly_budget_usd: float | None = None
    models: tuple[str, ...] | None = None


WEEKLY_CLIENT = ClientInfo(id="weekly", name="weekly-key", source="weekly")


class ClientRegistry:
    def __init__(
        self, config: Config, store: SQLiteStore | None, clock: Callable[[], datetime] = _utcnow
    ) -> None:
        self._config = config
        self._store = store
        self.clock = clock
        self._static: dict[str, ClientInfo] = {}
        for c in config.clients:
            self._static[hash_key(c.key)] = ClientInfo(
                id=static_id(c.key),
                name=c.name,
                source="static",
                key_hash=hash_key(c.key),
                rpm=c.rpm,
                tpm=c.tpm,
                monthly_budget_usd=c.monthly_budget_usd,
                models=tuple(c.models) if c.models is not None else None,
            )
        self._issued: dict[str, ClientInfo] = {}
        self._loaded_at = 0.0

    def reload(self) -> None:
        if self._store is None:
            return
        issued: dict[str, ClientInfo] = {}
        for row in self._store.list_clients(include_revoked=False):
            issued[row["key_hash"]] = ClientInfo(
                id=row["id"],
                name=row["name"],
                source="issued",
                key_hash=row["key_hash"],
                rpm=row["rpm"],
                tpm=row["tpm"],
                monthly_budget_usd=row["monthly_budget_usd"],
                models=tuple(row["models"]) if row["models"] is not None else None,
            )
        self._issued = issued
        self._loaded_at = time.monotonic()

    def has_any(self) -> bool:
        return bool(self._static or self._issued or self._config.client_key_rotation)

    def authenticate(self, presented: str | None) -> ClientInfo | None:
        if not presented:
            return None
        # The probe is on a SHA-256 digest of what was presented, so its timing says nothing
        # about a stored key; the final check is constant-time all the same.
        digest = hash_key(presented)
        for table in (self._static, self._issued):
            found = table.get(digest)
            if found is not None and hmac.compare_digest(found.key_hash, digest):
                return found
        secret = self._config.admin_secret
        weekly = self._config.client_key_rotation == "weekly" and secret
        if weekly and is_current(presented, str(secret), self.clock()):
            return WEEKLY_CLIENT
        return None

    def issued(self) -> list[dict[str, Any]]:
        """Issued clients as anyone with the admin secret may see them: never a hash."""
        if self._store is None:
            return []
        return [
            {k: v for k, v in row.items() if k != "key_hash"} for row in self._store.list_clients()
        ]

    def update(self, client_id: str, **limits: Any) -> dict[str, Any] | None:
        assert self._store is not None
        if not self._store.update_client(client_id, limits):
            return None
        self.reload()
        return next((c for c in self.issued() if c["id"] == client_id), None)

    def revoke(self, client_id: str) -> bool:
        assert self._store is not None
        done = self._store.revoke_client(client_id)
        self.reload()
        return done

    def issue(self, name: str, **limits: Any) -> tuple[str, dict[str, Any]]:
        """Create a client key; the plain key is returned once and only its hash is stored."""
        assert self._store is not None
        key = generate_key(self._config.auth.key_prefix, self._config.auth.key_length)
        row = {
            "id": uuid.uuid4().hex[:12],
            "name": name,
            "key_hash": hash_key(key),
            "key_hint": key[: len(self._config.auth.key_prefix) + 4] + "...",
            "created_at": time.time(),
            **{k: v for k, v in limits.items() if v is not None},
        }
        self._store.insert_client(row)
        self.reload()
        public = {k: v for k, v in row.items() if k != "key_hash"}
        return key, public


def extract_key(headers: Mapping[str, str]) -> str | None:
    """`Authorization: Bearer <key>` or `x-api-key: <key>`."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = headers.get("x-api-key")
    return key.strip() if key and key.strip() else None
