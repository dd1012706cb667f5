"""What happens around each proxied call: admission (allowed models, client rate limits, budget
reservation, one call to the state seam's Admissions) before it, and settlement after it (real
cost, real tokens, one ledger row, metrics). Refusals are counted in metrics, not written to the
ledger (SPEC §9)."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from relaygate.auth.clients import ClientInfo
from relaygate.chat_fields import output_tokens
from relaygate.config.model import Config
from relaygate.errors import BudgetExceeded, ModelNotAllowed, RateLimitExceeded, RelaygateError
from relaygate.keys.pool import KeyPool
from relaygate.limits.pricing import Pricing, Rates, usd
from relaygate.providers.base import Provider
from relaygate.state.protocols import Admissions, LedgerStore
from relaygate.state.records import Admission, AdmitRequest
from relaygate.types import Target, Usage
from relaygate.usage.ledger import Ledger, LedgerRow
from relaygate.usage.metrics import Metrics
from relaygate.usage.notifier import DailyReports


def new_request_id() -> str:
    """`req_` and 32 hex digits: the time in ms (12 digits), then 80 random bits. Ids sort by
    time, so the ledger's primary key grows at its end: random ids made each insert touch a random
    page of the index, and the ledger's write cost per row doubled as the table grew (8.8 -> 17
    us over 240k rows, measured; flat at 8.4 us with these). The random bits come from `random`
    (which reseeds itself in a forked worker), not a system call a request: an id is a label,
    not a secret."""
    return f"req_{time.time_ns() // 1_000_000:012x}{random.getrandbits(80):020x}"


@dataclass(slots=True)
class Call:
    """One proxied request from admission to settlement."""

    request_id: str
    route: str
    client: ClientInfo | None
    stream: bool
    prompt_estimate: int
    ts: float = field(default_factory=time.time)
    t0: float = field(default_factory=time.perf_counter)
    admission: Admission | None = None
    ttft_ms: int | None = None
    done: bool = False
    # an upload's audio length read from its file header: billed when the answer gives none
    audio_seconds: float | None = None
    # the most audio seconds its upload can hold: reserved at the per-second price (budgets)
    audio_bound_s: float = 0.0
    cache: str = "bypass"  # the response cache's word on it: hit, miss or bypass (SPEC §7b)
    cost_usd: float = 0.0  # what it cost, once settled


@dataclass(slots=True)
class _Children:
    requests: Any
    latency: Any
    ttft: Any
    prompt: Any
    completion: Any
    cost: Any


class Accounting:
    def __init__(
        self,
        config: Config,
        admissions: Admissions,
        ledger: LedgerStore | None,
        providers: Mapping[str, Provider],
        pools: Callable[[], Iterable[KeyPool]],
        known: Callable[[Target], bool] = lambda target: True,
    ) -> None:
        self.config = config
        self.providers = providers
        self.known = known  # metrics label a model it does not know as `other` (SPEC §8a)
        self.pricing = Pricing(config.pricing)
        self.admissions = admissions
        sink = ledger if config.ledger.enabled else None
        self.ledger = Ledger(
            sink,
            max_buffer=config.ledger.max_buffer_rows,
            interval_s=config.ledger.flush_interval_s,
            on_drop=lambda n: self.metrics.ledger_drops.inc(n),
        )
        self.metrics = Metrics(pools, lambda: self.ledger.depth)
        self._children: dict[tuple[str, str, str, int], _Children] = {}
        self.reports = DailyReports.from_config(config)  # a bad `reports:` stops start-up

    def rates(self, target: Target) -> Rates:
        provider = self.providers[target.provider]
        return self.pricing.rates(target.provider, target.model, provider.base_url or None)

    def refused(self, reason: str) -> None:
        self.metrics.refusals.labels(reason).inc()

    async def admit(
        self,
        call: Call,
        body: Mapping[str, Any],
        plan: list[Target],
        *,
        cached_tokens: int | None = None,
    ) -> None:
        """Allowed models, then the client's rate windows and budget in one call to the state
        seam; a refusal raises (429 / 403) and takes nothing. `cached_tokens`: the request is a
        cache hit of that many tokens, counted in the rate windows, reserving no budget."""
        client = call.client
        if client is None:
            return
        if client.models is not None and body.get("model") not in client.models:
            self.refused("model_not_allowed")
            raise ModelNotAllowed(
                f"This key may not use the model '{body.get('model')}'.", param="model"
            )
        budget = client.monthly_budget_usd if cached_tokens is None else None
        if client.rpm is None and client.tpm is None and budget is None:
            return
        worst = 0.0
        if cached_tokens is not None:
            tokens = cached_tokens
        else:
            out_tokens = output_tokens(body, self.config.limits.default_max_output_tokens)
            tokens = call.prompt_estimate + out_tokens
            if budget is not None:
                worst = max(
                    self.rates(t).worst_case(call.prompt_estimate, out_tokens, call.audio_bound_s)
                    for t in plan
                )
        admission = await self.admissions.admit(
            AdmitRequest(client.id, client.rpm, client.tpm, tokens, budget, worst)
        )
        call.admission = admission
        if admission.allowed:
            return
        if admission.refused == "budget":
            self.refused("budget")
            error: RelaygateError = BudgetExceeded(
                f"Monthly budget of {usd(budget or 0)} reached for this key "
                f"({usd(admission.budget_left_usd)} left, this request may cost up to "
                f"{usd(worst)})."
            )
            error.admission = admission
            raise error
        self.refused("rate_limit")
        wait = max(1, math.ceil(admission.retry_after_s))
        what, limit = (
            ("requests", admission.rpm)
            if admission.refused == "requests"
            else ("tokens", admission.tpm)
        )
        error = RateLimitExceeded(
            f"Rate limit of {limit} {what} per minute reached for this key; retry in {wait} s.",
            retry_after_s=wait,
        )
        error.admission = admission
        raise error

    def finish(
        self,
        call: Call,
        *,
        target: Target | None,
        key_id: str | None,
        status: int,
        error_code: str | None = None,
        usage: Usage | None = None,
        attempts: int = 0,
    ) -> None:
        """Settle the call and write its ledger row; a cache hit costs nothing."""
        if call.done:
            return
        call.done = True
        latency = time.perf_counter() - call.t0
        usage = usage or Usage()
        if call.audio_seconds is not None and usage.audio_seconds is None:
            usage.audio_seconds = call.audio_seconds
        cost = 0.0
        if target is not None and call.cache != "hit":
            cost = call.cost_usd = self.rates(target).cost(usage)
        if call.admission is not None and call.admission.allowed:
            self.admissions.settle(call.admission, usage.total_tokens, cost)
        provider = target.provider if target else ""
        model = "" if target is None else target.model if self.known(target) else "other"
        self.ledger.record(
            LedgerRow(
                id=call.request_id,
                ts=call.ts,
                client=call.client.name if call.client else None,
                client_id=call.client.id if call.client else None,
                route=call.route,
                provider=target.provider if target else None,
                model=target.model if target else None,
                key_id=key_id,
                status=status,
                error_code=error_code,
                latency_ms=int(latency * 1000),
                ttft_ms=call.ttft_ms,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cached_tokens=usage.cached_tokens,
                cost_usd=cost,
                cache=call.cache,
                stream=call.stream,
                attempts=attempts,
                estimated=usage.estimated,
            )
        )
        self._observe(call, provider, model, status, latency, usage, cost)

    def _observe(
        self,
        call: Call,
        provider: str,
        model: str,
        status: int,
        latency: float,
        usage: Usage,
        cost: float,
    ) -> None:
        key = (call.route, provider, model, status)
        children = self._children.get(key)
        if children is None:  # labels() lookups cost; keep the children of each combination
            if len(self._children) > 10_000:
                self._children.clear()
            m = self.metrics
            children = _Children(
                m.requests.labels(call.route, provider, model, str(status)),
                m.latency.labels(provider),
                m.ttft.labels(provider),
                m.tokens.labels(provider, model, "prompt"),
                m.tokens.labels(provider, model, "completion"),
                m.cost.labels(provider, model),
            )
            self._children[key] = children
        children.requests.inc()
        children.latency.observe(latency)
        if call.ttft_ms is not None:
            children.ttft.observe(call.ttft_ms / 1000)
        if usage.total_tokens:
            children.prompt.inc(usage.prompt_tokens)
            children.completion.inc(usage.completion_tokens)
        if cost:
            children.cost.inc(cost)
