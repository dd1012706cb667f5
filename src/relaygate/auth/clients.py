"""Client keys: static ones from the config and environment, issued ones from the state seam's
Clients (stored as SHA-256 hashes). Lookups are a hash and a dict probe in memory; the issued
clients are re-read every second so a revocation made elsewhere takes effect within a second."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from relaygate.auth.weekly import is_current
from relaygate.config.model import Config
from relaygate.state.protocols import Clients
from relaygate.state.records import ClientChanges, ClientRecord


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


def hashed_id(digest: str) -> str:
    """The client id of a key configured by its SHA-256 only (`key_sha256`): stable, and not
    the hash itself."""
    derived = hashlib.sha256(b"relaygate hashed client id\0" + digest.encode("ascii")).hexdigest()
    return f"static-{derived[:12]}"


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


def public(record: ClientRecord) -> dict[str, Any]:
    """An issued client as the admin may see it: never its hash."""
    return {
        "id": record.id,
        "name": record.name,
        "key_hint": record.key_hint,
        "rpm": record.rpm,
        "tpm": record.tpm,
        "monthly_budget_usd": record.monthly_budget_usd,
        "models": list(record.models) if record.models is not None else None,
        "created_at": record.created_at,
        "revoked_at": record.revoked_at,
    }


def _info(record: ClientRecord) -> ClientInfo:
    return ClientInfo(
        id=record.id,
        name=record.name,
        source="issued",
        key_hash=record.key_hash,
        rpm=record.rpm,
        tpm=record.tpm,
        monthly_budget_usd=record.monthly_budget_usd,
        models=record.models,
    )


class ClientRegistry:
    def __init__(
        self, config: Config, store: Clients | None, clock: Callable[[], datetime] = _utcnow
    ) -> None:
        self._config = config
        self._store = store
        self.clock = clock
        self._static: dict[str, ClientInfo] = {}
        for c in config.clients:
            if c.from_keys_file:
                continue
            digest = hash_key(c.key) if c.key is not None else str(c.key_sha256)
            self._static[digest] = ClientInfo(
                id=static_id(c.key) if c.key is not None else hashed_id(digest),
                name=c.name,
                source="static",
                key_hash=digest,
                rpm=c.rpm,
                tpm=c.tpm,
                monthly_budget_usd=c.monthly_budget_usd,
                models=tuple(c.models) if c.models is not None else None,
            )
        self._file: dict[str, ClientInfo] = {}
        self.set_file_keys([c.key for c in config.clients if c.from_keys_file and c.key])
        self._issued: dict[str, ClientInfo] = {}
        self._loaded_at = 0.0

    def set_file_keys(self, keys: list[str]) -> None:
        """The keys file's keys, as they are now (the file is watched: auth/keys_file.py)."""
        table = {}
        for i, key in enumerate(keys):
            digest = hash_key(key)
            table[digest] = ClientInfo(
                id=static_id(key), name=f"keys-file-{i + 1}", source="static", key_hash=digest
            )
        self._file = table

    async def watch_keys_file(self) -> None:
        from pathlib import Path

        from relaygate.auth.keys_file import watch

        if self._config.keys_file:
            await watch(Path(self._config.keys_file), self.set_file_keys)

    async def reload(self) -> None:
        if self._store is None:
            return
        records = await self._store.list(include_revoked=False)
        self._issued = {r.key_hash: _info(r) for r in records}
        self._loaded_at = time.monotonic()

    def has_any(self) -> bool:
        return bool(self._static or self._file or self._issued or self._config.client_key_rotation)

    def authenticate(self, presented: str | None) -> ClientInfo | None:
        if not presented:
            return None
        # The probe is on a SHA-256 digest of what was presented, so its timing says nothing
        # about a stored key; the final check is constant-time all the same.
        digest = hash_key(presented)
        for table in (self._static, self._file, self._issued):
            found = table.get(digest)
            if found is not None and hmac.compare_digest(found.key_hash, digest):
                return found
        secret = self._config.admin_secret
        weekly = self._config.client_key_rotation == "weekly" and secret
        if weekly and is_current(presented, str(secret), self.clock()):
            return WEEKLY_CLIENT
        return None

    async def issued(self) -> list[dict[str, Any]]:
        """Issued clients as anyone with the admin secret may see them: never a hash."""
        if self._store is None:
            return []
        return [public(r) for r in await self._store.list()]

    async def update(self, client_id: str, **limits: Any) -> dict[str, Any] | None:
        assert self._store is not None
        if "models" in limits and limits["models"] is not None:
            limits["models"] = tuple(limits["models"])
        changes = ClientChanges(fields=frozenset(limits) & ClientChanges.ALLOWED, **limits)
        record = await self._store.update(client_id, changes)
        await self.reload()
        return None if record is None else public(record)

    async def revoke(self, client_id: str) -> bool:
        assert self._store is not None
        done = await self._store.revoke(client_id)
        await self.reload()
        return done

    async def issue(
        self,
        name: str,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        monthly_budget_usd: float | None = None,
        models: list[str] | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """Create a client key; the plain key is returned once and only its hash is stored."""
        assert self._store is not None
        key = generate_key(self._config.auth.key_prefix, self._config.auth.key_length)
        record = ClientRecord(
            id=uuid.uuid4().hex[:12],
            name=name,
            key_hash=hash_key(key),
            key_hint=key[: len(self._config.auth.key_prefix) + 4] + "...",
            created_at=time.time(),
            rpm=rpm,
            tpm=tpm,
            monthly_budget_usd=monthly_budget_usd,
            models=tuple(models) if models is not None else None,
        )
        await self._store.insert(record)
        await self.reload()
        return key, public(record)
