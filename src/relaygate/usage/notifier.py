"""The daily usage report (SPEC §9): built from the daily aggregates and sent to the Telegram Bot
API and/or a webhook at `reports.daily_at`, in `reports.timezone` (UTC unless set).

Which day a report covers: the latest complete UTC day at the moment it is due. The ledger's days
(like the budgets' months) are UTC days, so a report never mixes two partial days; the timezone
only decides when `daily_at` falls. A gateway that starts after today's `daily_at` sends its first
report tomorrow. `relaygate report --send` sends the report of any day or month at once."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import aiohttp
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from relaygate.config.model import Config
from relaygate.errors import ConfigError
from relaygate.state.protocols import LedgerStore
from relaygate.usage.reports import usage_report

if TYPE_CHECKING:
    from relaygate.gateway import Gateway

log = logging.getLogger("relaygate.reports")
DEFAULT_TELEGRAM = "https://api.telegram.org"
TELEGRAM_MAX_CHARS = 4096
SEND_TIMEOUT_S = 15.0
MAX_SLEEP_S = 60.0  # the scheduler re-reads the clock at least this often
CLAIM_TTL_S = 3 * 86400.0  # a day's report is claimed by one replica for this long
RETRY_WAITS_S = (30.0, 120.0)  # a failed scheduled delivery is tried again after these waits
_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")

Sleep = Callable[[float], Awaitable[None]]


def _url(value: str | None) -> str | None:
    if value is not None and not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return value


class ReportsConfig(BaseModel):
    """`reports:` in the config. A report is scheduled when it has somewhere to go (Telegram
    token + chat id, and/or a webhook URL); `daily_at` is then 08:00 unless set."""

    model_config = ConfigDict(extra="forbid")

    daily_at: str = "08:00"
    timezone: str = "UTC"
    telegram_bot_token: str | None = Field(default=None, min_length=1, repr=False)  # a secret
    telegram_chat_id: str | None = Field(default=None, min_length=1)
    telegram_base_url: str = DEFAULT_TELEGRAM
    webhook_url: str | None = Field(default=None, repr=False)  # may carry a token
    top: int = Field(default=5, ge=1, le=50)

    @field_validator("daily_at")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        if not _HHMM.match(value.strip()):
            raise ValueError(f"must be a time of day like 08:00 (24-hour HH:MM), got {value!r}")
        return value.strip()

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (a name like Europe/Berlin)") from None
        return value

    @field_validator("telegram_chat_id", mode="before")
    @classmethod
    def _chat_id(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("telegram_base_url", "webhook_url")
    @classmethod
    def _urls(cls, value: str | None) -> str | None:
        return _url(value)

    @property
    def bot_api(self) -> str:
        return self.telegram_base_url.rstrip("/")

    @property
    def telegram(self) -> bool:
        return bool(self.telegram_bot_token and self.telegram_chat_id)

    @property
    def destinations(self) -> list[str]:
        on = {"telegram": self.telegram, "webhook": bool(self.webhook_url)}
        return [name for name, yes in on.items() if yes]

    @property
    def at(self) -> tuple[int, int]:
        hour, minute = self.daily_at.split(":")
        return int(hour), int(minute)


def reports_config(config: Config) -> ReportsConfig:
    """Validate `config.reports` once, at start-up: a ConfigError names the field (and the file)."""
    where = "" if config.source == "defaults" else f"{config.source}: "
    try:
        cfg = ReportsConfig.model_validate(config.reports)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        msg = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{where}reports.{loc}: {msg}") from None
    pairs = (("telegram_bot_token", "telegram_chat_id"), ("telegram_chat_id", "telegram_bot_token"))
    for has, needs in pairs:
        if getattr(cfg, has) and not getattr(cfg, needs):
            raise ConfigError(f"{where}reports.{needs}: required with reports.{has}")
    if "daily_at" in cfg.model_fields_set and not cfg.destinations:
        raise ConfigError(
            f"{where}reports.daily_at: set reports.telegram_bot_token and "
            "reports.telegram_chat_id, or reports.webhook_url, to send the report somewhere"
        )
    return cfg


# --- the report -------------------------------------------------------------------------------
def latest_complete_day(now: float) -> str:
    """The UTC day before the one `now` falls in."""
    return (datetime.fromtimestamp(now, UTC).date() - timedelta(days=1)).isoformat()


async def build_report(
    store: LedgerStore, *, day: str | None = None, month: str | None = None, top: int = 5
) -> dict[str, Any]:
    """Totals and the top clients, models and providers by cost, for a day or a month (UTC)."""
    groups = {
        by: await usage_report(store, by=by, day=day, month=month) for by in ("client", "model")
    }
    providers = await usage_report(store, by="provider", day=day, month=month)
    totals = dict(providers["totals"])
    weighted = sum(r["avg_latency_ms"] * r["requests"] for r in providers["rows"])
    totals["avg_latency_ms"] = round(weighted / totals["requests"], 1) if totals["requests"] else 0
    report: dict[str, Any] = {
        "type": "relaygate.usage_report",
        "period": providers["period"],
        "totals": totals,
        "top_clients": groups["client"]["rows"][:top],
        "top_models": groups["model"]["rows"][:top],
        "providers": providers["rows"][:top],
    }
    report["text"] = report_text(report)
    return report


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _line(row: dict[str, Any]) -> str:
    errors = f", {_n(row['errors'], 'error')}" if row["errors"] else ""
    tokens = row["prompt_tokens"] + row["completion_tokens"]
    return (
        f"- {row['name']}: ${row['cost_usd']:.6f}, {_n(row['requests'], 'request')}{errors}, "
        f"{_n(tokens, 'token')}"
    )


def report_text(report: dict[str, Any]) -> str:
    t = report["totals"]
    lines = [f"relaygate usage report: {report['period']} (UTC)"]
    if not t["requests"]:
        return "\n".join([*lines, "No requests."])
    lines += [
        f"Requests: {t['requests']} ({_n(t['errors'], 'error')})",
        f"Tokens: {t['prompt_tokens']} prompt + {t['completion_tokens']} completion",
        f"Cost: ${t['cost_usd']:.6f}",
        f"Average latency: {t['avg_latency_ms']} ms",
    ]
    for title, key in (("clients", "top_clients"), ("models", "top_models")):
        lines += ["", f"Top {title} by cost:", *(_line(r) for r in report[key])]
    return "\n".join(lines)[:TELEGRAM_MAX_CHARS]


# --- delivery ---------------------------------------------------------------------------------
@dataclass(slots=True)
class Delivery:
    destination: str  # "telegram" or "webhook"
    ok: bool
    detail: str  # "sent", "HTTP 401", or an exception's type: never a URL or a token


async def _post(session: aiohttp.ClientSession, target: _Target) -> str | None:
    """None when the receiver took it; else a short reason that carries no URL."""
    timeout = aiohttp.ClientTimeout(total=SEND_TIMEOUT_S)
    try:
        async with session.post(target.url, json=target.payload, timeout=timeout) as resp:
            body = await resp.read()
            if resp.status >= 300:
                return f"HTTP {resp.status}"
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return type(exc).__name__
    if target.bot_api:  # the Bot API answers {"ok": true, "result": ...}
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            answer = None
        if not isinstance(answer, dict) or answer.get("ok") is not True:
            return "the Bot API did not answer ok"
    return None


@dataclass(slots=True)
class _Target:
    name: str
    url: str
    payload: dict[str, Any]
    bot_api: bool = False


async def deliver(
    report: dict[str, Any],
    cfg: ReportsConfig,
    session: aiohttp.ClientSession,
    *,
    retry_waits: Sequence[float] = (),
    sleep: Sleep = asyncio.sleep,
) -> list[Delivery]:
    """Send the report to every configured destination; failures are logged without secrets."""
    targets: list[_Target] = []
    if cfg.telegram:
        url = f"{cfg.bot_api}/bot{cfg.telegram_bot_token}/sendMessage"
        message = {"chat_id": cfg.telegram_chat_id, "text": report["text"]}
        targets.append(_Target("telegram", url, message, bot_api=True))
    if cfg.webhook_url:
        targets.append(_Target("webhook", cfg.webhook_url, report))
    out = []
    for target in targets:
        reason = await _post(session, target)
        for wait in retry_waits:
            if reason is None:
                break
            log.warning("report to %s failed (%s); again in %.0f s", target.name, reason, wait)
            await sleep(wait)
            reason = await _post(session, target)
        if reason is not None:
            log.warning("report for %s to %s failed (%s)", report["period"], target.name, reason)
        else:
            log.info("report for %s sent to %s", report["period"], target.name)
        out.append(Delivery(target.name, reason is None, reason or "sent"))
    return out


async def send_daily_report(
    gw: Gateway,
    *,
    day: str | None = None,
    month: str | None = None,
    retry_waits: Sequence[float] = (),
    sleep: Sleep = asyncio.sleep,
) -> list[Delivery]:
    """Send one report through a running gateway (its session, its store, its ledger)."""
    store = gw.ledger_store
    if store is None:
        raise ConfigError("reports need a database (DATABASE_URL)")
    cfg = gw.accounting.reports.config
    await gw.accounting.ledger.flush()
    report = await build_report(store, day=day, month=month, top=cfg.top)
    return await deliver(report, cfg, gw.session(), retry_waits=retry_waits, sleep=sleep)


# --- the schedule -----------------------------------------------------------------------------
def next_run(now: float, cfg: ReportsConfig) -> float:
    """The next instant after `now` at which the wall clock in `cfg.timezone` shows `daily_at`."""
    hour, minute = cfg.at
    local = datetime.fromtimestamp(now, ZoneInfo(cfg.timezone))
    due = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if due.timestamp() <= now:
        due = (local + timedelta(days=1)).replace(hour=hour, minute=minute, second=0, microsecond=0)
    return due.timestamp()


class DailyReports:
    """The validated `reports:` settings and the scheduler's clock (injectable, for tests)."""

    def __init__(self, config: ReportsConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock

    @classmethod
    def from_config(cls, config: Config) -> DailyReports:
        return cls(reports_config(config))

    def start(self, gw: Gateway) -> list[asyncio.Task[None]]:
        """The scheduler task, when a report has somewhere to go and data to come from."""
        if not self.config.destinations or gw.ledger_store is None:
            return []
        return [asyncio.create_task(run_daily_reports(gw))]


async def run_daily_reports(
    gw: Gateway, *, clock: Callable[[], float] | None = None, sleep: Sleep = asyncio.sleep
) -> None:
    """Forever: sleep (in bounded steps, re-reading the clock) until the next `daily_at`, send
    the report of the latest complete UTC day, log what failed, go on."""
    reports = gw.accounting.reports
    now = clock or reports.clock
    missed = next_run(now(), reports.config) - 86400  # the last due time: was it sent?
    await _send_once(gw, missed, sleep, only_with_data=True)
    while True:
        due = next_run(now(), reports.config)
        while (left := due - now()) > 0:
            await sleep(min(left, MAX_SLEEP_S))
        await _send_once(gw, due, sleep)


async def _send_once(
    gw: Gateway, due: float, sleep: Sleep, *, only_with_data: bool = False
) -> None:
    """The report due at `due`, sent by whichever replica claims it first (once across them
    all). `only_with_data`: a missed report is sent after a restart only when that day had
    requests (a new install does not start by reporting an empty day)."""
    day = latest_complete_day(due)
    name = f"daily-report:{day}"
    try:
        claims = gw.state.claims
        if only_with_data:
            if await claims.claimed(name):
                return
            store = gw.ledger_store
            if store is None or not (await store.usage("day", day)):
                return
        if not await claims.claim(name, CLAIM_TTL_S):
            return
        await send_daily_report(gw, day=day, retry_waits=RETRY_WAITS_S, sleep=sleep)
    except Exception as exc:  # noqa: BLE001 (a background loop logs and goes on)
        log.warning("daily report failed: %s", type(exc).__name__)
