"""Admissions that never fail or hang because Redis is away (SPEC §11, "Faults"): Redis
answers while it can; when it does not (StateUnavailable, a timeout), this replica's own fallback
(memory) answers with its share of each limit (rpm, tpm and what was left of the budget, divided
by the number of live replicas the heartbeat last saw), one warning is logged for the whole
outage, requests go straight to the fallback without trying Redis, and a probe asks Redis every
PROBE_S until it answers ("Redis is back", one info line). A request waits on a dead Redis at most
once per outage, and never longer than the backend's timeout.

Owns the outage state, the last budget left Redis reported per client (bounded), and which
admissions the fallback made (by ticket: Redis tickets start with `redis_admissions.TICKET`), so
their settlements go back where they came from and their spend reaches Redis when it returns."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

from relaygate.state.memory_admissions import utc_month
from relaygate.state.protocols import Admissions
from relaygate.state.records import Admission, AdmitRequest, StateUnavailable
from relaygate.state.redis_admissions import TICKET, RedisAdmissions
from relaygate.state.redis_db import stop

log = logging.getLogger("relaygate.state")
V = TypeVar("V")

PROBE_S = 1.0  # while Redis is away: how often it is asked again
MAX_CLIENTS = 100_000  # the remembered budgets left, and the fallback's open tickets


def _remember(table: dict[str, V], key: str, value: V) -> None:
    """Put `key` last in an insertion-ordered table, dropping the oldest past MAX_CLIENTS."""
    table.pop(key, None)
    table[key] = value
    if len(table) > MAX_CLIENTS:
        del table[next(iter(table))]


class FailoverAdmissions:
    """Admissions by `primary` (Redis), or by `fallback` with a share of each limit while the
    primary is away; `replicas()` is the last known number of live replicas."""

    def __init__(
        self, primary: RedisAdmissions, fallback: Admissions, replicas: Callable[[], int]
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self.replicas = replicas
        self.down = False
        self._probe: asyncio.Task[None] | None = None
        self._left: dict[str, tuple[float, str]] = {}  # client id -> (budget left, its month)
        self._base: dict[str, float] = {}  # client id -> the fallback's spend as the outage began
        self._opened: dict[str, str] = {}  # the fallback's tickets (budgeted) -> client id
        self._seed: tuple[str, dict[str, float]] | None = None
        self._closed = False

    async def admit(self, request: AdmitRequest) -> Admission:
        if not self.down:
            try:
                adm = await self.primary.admit(request)
            except (StateUnavailable, TimeoutError) as exc:
                self._went_down(exc)
            else:
                if request.budget_usd is not None and adm.refused in (None, "budget"):
                    _remember(self._left, request.client_id, (adm.budget_left_usd, adm.month))
                return adm
        return await self._share(request)

    def settle(self, admission: Admission, tokens: int, cost_usd: float) -> None:
        if admission.ticket.startswith(TICKET):
            self.primary.settle(admission, tokens, cost_usd)
            return
        first = not admission.settled
        self.fallback.settle(admission, tokens, cost_usd)
        client = self._opened.pop(admission.ticket, None)
        if first and client is not None:
            self.primary.add_spend(client, admission.month, cost_usd)

    def release(self, admission: Admission) -> None:
        if admission.ticket.startswith(TICKET):
            self.primary.release(admission)
            return
        self._opened.pop(admission.ticket, None)
        self.fallback.release(admission)

    async def spent(self, client_id: str, month: str) -> float:
        if not self.down:
            with contextlib.suppress(StateUnavailable, TimeoutError):
                return await self.primary.spent(client_id, month)
        return await self.fallback.spent(client_id, month)

    async def seed_spend(self, month: str, spend: Mapping[str, float]) -> None:
        """Into the fallback, and into Redis (again when it returns, if it is away now)."""
        self._seed = (month, dict(spend))
        await self.fallback.seed_spend(month, spend)
        try:
            await self.primary.seed_spend(month, spend)
        except (StateUnavailable, TimeoutError) as exc:
            self._went_down(exc)
            raise
        self._seed = None

    async def flush(self) -> None:
        await self.fallback.flush()
        await self.primary.flush()

    async def aclose(self) -> None:
        self._closed = True
        task, self._probe = self._probe, None
        await stop(task, PROBE_S)
        await self.primary.aclose()
        await self.fallback.aclose()

    # --- while Redis is away -------------------------------------------------------------------
    def _went_down(self, exc: BaseException) -> None:
        if self.down or self._closed:
            return
        self.down = True
        self._base.clear()
        why = str(exc).removeprefix("redis: ") if isinstance(exc, StateUnavailable) else "timeout"
        log.warning("Redis unavailable (%s): limits fall back to this replica's share", why)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._wait_for_redis())

    async def _wait_for_redis(self) -> None:
        while self.down and not self._closed:
            await asyncio.sleep(PROBE_S)
            try:
                await self.primary.ping()
            except (StateUnavailable, TimeoutError):
                continue
            self.down = False
            log.info("Redis is back: limits are shared again")
            if self._seed is not None:
                with contextlib.suppress(StateUnavailable, TimeoutError):
                    await self.primary.seed_spend(*self._seed)
                    self._seed = None

    async def _share(self, request: AdmitRequest) -> Admission:
        """The fallback's answer with this replica's share of each limit; the admission shows
        the client's own limits, its remaining numbers are of the share."""
        n = max(1, self.replicas())
        rpm, tpm, budget = request.rpm, request.tpm, request.budget_usd
        share_budget = None
        if budget is not None:
            month = utc_month(time.time())
            seen = self._left.get(request.client_id)
            left = seen[0] if seen is not None and seen[1] == month else budget
            base = self._base.get(request.client_id)
            if base is None:  # what the fallback had spent before this outage
                base = await self.fallback.spent(request.client_id, month)
                _remember(self._base, request.client_id, base)
            share_budget = base + left / n
        adm = await self.fallback.admit(
            AdmitRequest(
                request.client_id,
                None if rpm is None else max(1, rpm // n),
                None if tpm is None else max(1, tpm // n),
                request.tokens,
                share_budget,
                request.cost_usd,
            )
        )
        adm.rpm, adm.tpm, adm.budget_usd = rpm, tpm, budget
        if adm.allowed and adm.ticket and budget is not None:
            _remember(self._opened, adm.ticket, request.client_id)
        return adm
