"""The typed configuration tree (SPEC §2): validated once at start-up, read-only afterwards."""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CsvList = Annotated[list[str], BeforeValidator(_split_csv)]


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


LogLevel = Annotated[
    Literal["critical", "error", "warning", "info", "debug"], BeforeValidator(_lower)
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class KeyLimits(_Model):
    """Proactive per-key limits: a key is skipped before the provider has to refuse it."""

    rpm: int | None = Field(default=None, ge=1)
    rpd: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)


class KeySpec(_Model):
    """One upstream key with an optional label (the label becomes its key id), quota bucket
    (keys sharing one park together when its quota is spent) and egress proxy of its own."""

    key: str = Field(min_length=1)
    label: str | None = None
    bucket: str | None = Field(default=None, min_length=1, max_length=128)
    proxy: str | None = Field(default=None, repr=False)

    @field_validator("proxy")
    @classmethod
    def _proxy_url(cls, value: str | None) -> str | None:
        return check_proxy_url(value)


PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")
ENV_PROXIES = tuple(
    f"{name}_PROXY".lower() if lower else f"{name}_PROXY"
    for name in ("HTTPS", "HTTP", "ALL")
    for lower in (False, True)
)


def check_proxy_url(value: str | None) -> str | None:
    """A proxy URL with a scheme the transport speaks and a host; the error never repeats it
    (it may hold credentials)."""
    if value is None or value == "":
        return None
    parts = urlsplit(value)
    if parts.scheme not in PROXY_SCHEMES or not parts.hostname:
        raise ValueError(f"a proxy must be a URL {'|'.join(PROXY_SCHEMES)}://host:port")
    return value


def _keys(value: Any) -> Any:
    value = _split_csv(value)
    if isinstance(value, list):
        return [{"key": item} if isinstance(item, str) else item for item in value]
    return value


class TlsConfig(_Model):
    """TLS to one provider: a CA bundle (else the system's trust store), `verify: false` for a
    lab server (a warning at start), a client certificate (and its key, unless in the same file)."""

    ca_bundle: str | None = None
    verify: bool = True
    client_cert: str | None = None
    client_key: str | None = None

    @model_validator(mode="after")
    def _key_needs_cert(self) -> TlsConfig:
        if self.client_key and not self.client_cert:
            raise ValueError("tls.client_key needs tls.client_cert")
        return self


class TransportConfig(_Model):
    """How calls to one provider leave (SPEC 11a). `own`: the built-in HTTP/1.1 client;
    `library`: the aiohttp one (proxies, HTTP/2); `auto`: the library one when a proxy, TLS
    option or HTTP/2 is set, else the own one."""

    kind: Literal["auto", "own", "library"] = "auto"
    http2: bool = False
    max_connections_per_host: int = Field(default=1000, ge=1, le=10_000)
    keepalive_s: float = Field(default=30.0, gt=0, le=3600)
    connect_timeout_s: float = Field(default=10.0, gt=0, le=600)
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    max_header_count: int = Field(default=100, ge=8, le=10_000)
    max_header_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)


class ProviderConfig(_Model):
    type: str | None = None
    base_url: str | None = None
    keys: Annotated[list[KeySpec], BeforeValidator(_keys)] = Field(default_factory=list)
    key_strategy: Literal["round_robin", "least_used"] = "least_used"
    key_limits: KeyLimits = Field(default_factory=KeyLimits)
    models: CsvList = Field(default_factory=list)
    default_model: str | None = None
    timeout_s: float = Field(default=600.0, gt=0)
    stream_idle_timeout_s: float = Field(default=300.0, gt=0)
    headers: dict[str, str] = Field(default_factory=dict)
    enabled: bool = True
    # a `type: openai` server that serves POST /responses itself: Responses bodies pass through
    # (None: only OpenAI's own base URL does)
    responses_api: bool | None = None
    proxy: str | None = None  # else HTTPS_PROXY / HTTP_PROXY / ALL_PROXY / NO_PROXY
    tls: TlsConfig = Field(default_factory=TlsConfig)
    transport: TransportConfig = Field(default_factory=TransportConfig)

    @field_validator("proxy")
    @classmethod
    def _proxy_url(cls, value: str | None) -> str | None:
        return check_proxy_url(value)

    @model_validator(mode="after")
    def _own_transport_limits(self) -> ProviderConfig:
        asks = self.proxy or any(k.proxy for k in self.keys) or self.transport.http2
        if self.transport.kind == "own" and asks:
            raise ValueError(
                "transport.kind: own speaks HTTP/1.1 without proxies; use kind: library or auto"
            )
        return self


class RoutingConfig(_Model):
    priority: CsvList = Field(default_factory=list)
    default_models: dict[str, str] = Field(default_factory=dict)
    aliases: dict[str, str] = Field(default_factory=dict)
    groups: dict[str, list[str]] = Field(default_factory=dict)
    seed_model: str | None = None  # the seed routes' model when the request names none
    audio_model: str | None = None  # /upload's transcription model
    # each provider's model list, read in the background at start and every so often (0: never)
    discover_every_s: float = Field(default=300.0, ge=0)
    # where `priority` was read when it was not the YAML file (named in error messages)
    priority_source: str | None = Field(default=None, exclude=True)


class RetryConfig(_Model):
    """The attempt loop's bounds: a per-request deadline and a retry budget."""

    max_attempts: int = Field(default=4, ge=1, le=50)
    deadline_s: float = Field(default=900.0, gt=0)
    backoff_base_s: float = Field(default=0.2, ge=0)
    backoff_max_s: float = Field(default=4.0, ge=0)
    default_cooldown_s: float = Field(default=60.0, gt=0)
    failure_threshold: int = Field(default=3, ge=1)
    failure_cooldown_s: float = Field(default=30.0, gt=0)
    failure_cooldown_max_s: float = Field(default=600.0, gt=0)
    exhausted_default_s: float = Field(default=3600.0, gt=0)
    pool_throttle_window_s: float = Field(default=10.0, gt=0)


MIN_CLIENT_KEY = 8


class ClientConfig(_Model):
    """A static client: its key, or only the SHA-256 of it (hex), as a migrated gateway kept."""

    name: str = Field(min_length=1)
    key: str | None = Field(default=None, min_length=MIN_CLIENT_KEY)
    key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    monthly_budget_usd: float | None = Field(default=None, ge=0)
    models: CsvList | None = None
    from_keys_file: bool = Field(default=False, exclude=True)  # re-read while the server runs

    @model_validator(mode="after")
    def _one_key(self) -> ClientConfig:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give exactly one of key and key_sha256")
        if self.key_sha256 is not None:
            self.key_sha256 = self.key_sha256.lower()
        return self


class AuthConfig(_Model):
    key_prefix: str = "rg-"
    key_length: int = Field(default=43, ge=16, le=256)


class CacheConfig(_Model):
    """The response cache (SPEC §7b): exact match per client (all clients when `shared`);
    `coalesce` makes identical concurrent misses one upstream call."""

    enabled: bool = False
    ttl_s: float = Field(default=900.0, gt=0)
    max_entries: int = Field(default=10000, ge=1)
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)  # the memory backend's bound
    shared: bool = False
    coalesce: bool = False


class PriceConfig(_Model):
    """USD per million tokens, and/or per audio second (`per_second`: transcription); an
    entry with only `per_second` prices no tokens."""

    input_per_mtok: float = Field(default=0.0, ge=0)
    output_per_mtok: float = Field(default=0.0, ge=0)
    cached_input_per_mtok: float | None = Field(default=None, ge=0)
    per_second: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _priced(self) -> PriceConfig:
        given = self.model_fields_set & {"input_per_mtok", "output_per_mtok", "per_second"}
        if not given:
            raise ValueError("give input_per_mtok and output_per_mtok, or per_second")
        return self


class LimitsConfig(_Model):
    """How client budgets reserve before a request: the worst case is the prompt (request bytes
    divided by `prompt_bytes_per_token`) plus the request's max tokens, or this default."""

    default_max_output_tokens: int = Field(default=4096, ge=1)
    prompt_bytes_per_token: float = Field(default=3.0, gt=0)


class LedgerConfig(_Model):
    enabled: bool = True
    retention_days: int = Field(default=90, ge=1)
    max_buffer_rows: int = Field(default=100_000, ge=10)
    flush_interval_s: float = Field(default=0.25, gt=0)  # SPEC §8a: a kill -9 loses <= 500 ms


class ServerConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    reload: bool = False
    log_level: LogLevel = "info"
    log_json: bool = False
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_audio_body_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    shutdown_grace_s: float = Field(default=30.0, ge=0, le=3600)


class Config(_Model):
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    retries: RetryConfig = Field(default_factory=RetryConfig)
    clients: list[ClientConfig] = Field(default_factory=list)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    pricing: dict[str, PriceConfig] = Field(default_factory=dict)
    reports: dict[str, Any] = Field(default_factory=dict)
    server: ServerConfig = Field(default_factory=ServerConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    database_url: str = "sqlite:///relaygate-data/relaygate.db"
    redis_url: str | None = None
    admin_secret: str | None = None
    client_key_rotation: Literal["weekly"] | None = None
    keys_file: str | None = None
    source: str = Field(default="defaults", exclude=True)

    @field_validator("providers")
    @classmethod
    def _names(cls, value: dict[str, ProviderConfig]) -> dict[str, ProviderConfig]:
        for name in value:
            if not name or "/" in name or ":" in name:
                raise ValueError(f"provider name {name!r} may not contain '/' or ':'")
        return value

    @model_validator(mode="after")
    def _rotation_needs_secret(self) -> Config:
        if self.client_key_rotation == "weekly" and not self.admin_secret:
            raise ValueError(
                "client_key_rotation: weekly needs ADMIN_SECRET (the key derives from it)"
            )
        return self

    def secrets(self) -> list[str]:
        """Every secret this config holds, for the redaction helper."""
        found = [spec.key for p in self.providers.values() for spec in p.keys]
        found += [c.key for c in self.clients if c.key]
        urls = [p.base_url or "" for p in self.providers.values()]  # credentials in a URL
        urls += [p.proxy or "" for p in self.providers.values()]
        urls += [spec.proxy or "" for p in self.providers.values() for spec in p.keys]
        urls += [os.environ.get(name, "") for name in ENV_PROXIES]  # what the transport reads
        for url in urls:
            parts = urlsplit(url)
            if parts.password:
                found += [parts.password, f"{parts.username}:{parts.password}"]
        found += [str(self.reports.get(k) or "") for k in ("telegram_bot_token", "webhook_url")]
        if self.admin_secret:
            found.append(self.admin_secret)
        return [s for s in found if s]
