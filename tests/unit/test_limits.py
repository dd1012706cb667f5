"""Rate limits, budgets, prices and the weekly key on their own (injectable clocks). Rate windows
and budgets are MemoryAdmissions (one atomic admit, settle or release once); the errors and headers
a refusal becomes are Accounting's and http/headers.py's."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from relaygate.accounting import Accounting, Call
from relaygate.auth.clients import ClientInfo
from relaygate.auth.weekly import current_key_info, is_current, week_label, weekly_key
from relaygate.config.model import Config, PriceConfig
from relaygate.errors import BudgetExceeded, RateLimitExceeded
from relaygate.gateway import build_providers
from relaygate.http.headers import error_headers, limit_headers
from relaygate.limits.pricing import Pricing
from relaygate.state.memory_admissions import MemoryAdmissions, utc_month
from relaygate.state.records import AdmitRequest
from relaygate.types import Target, Usage


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def req(
    client: str = "c",
    *,
    rpm: int | None = None,
    tpm: int | None = None,
    tokens: int = 10,
    budget: float | None = None,
    cost: float = 0.0,
) -> AdmitRequest:
    return AdmitRequest(client, rpm, tpm, tokens, budget, cost)


def accounting(admissions: MemoryAdmissions) -> Accounting:
    """The real admission path (the errors and their headers) over `admissions`."""
    config = Config.model_validate(
        {
            "providers": {"echo": {}},
            "pricing": {"echo/x": {"input_per_mtok": 1000, "output_per_mtok": 1000}},
            "ledger": {"enabled": False},
        }
    )
    return Accounting(config, admissions, None, build_providers(config), lambda: [])


def call(client: ClientInfo) -> Call:
    return Call("req_1", "chat", client, False, 10)


BODY = {"model": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
TARGET = Target("echo", "x")


async def test_rpm_5_the_sixth_request_in_the_minute_is_refused_with_retry_after():
    clock = Clock()
    admissions = MemoryAdmissions(clock)
    remaining = []
    for _ in range(5):
        admitted = await admissions.admit(req(rpm=5))
        assert admitted.allowed
        remaining.append(int(limit_headers(admitted)["x-ratelimit-remaining-requests"]))
        clock.t += 1
    assert remaining == [4, 3, 2, 1, 0]
    refused = await admissions.admit(req(rpm=5))
    assert not refused.allowed and refused.refused == "requests" and refused.ticket == ""
    assert refused.retry_after_s == 55
    assert limit_headers(refused)["x-ratelimit-remaining-requests"] == "0"
    # What the client is answered: 429 rate_limit_exceeded, retry-after 55.
    client = ClientInfo(id="c", name="c", source="static", rpm=5)
    with pytest.raises(RateLimitExceeded) as error:
        await accounting(admissions).admit(call(client), BODY, [TARGET])
    assert error.value.status == 429 and error.value.code == "rate_limit_exceeded"
    assert error_headers(error.value)["retry-after"] == "55"
    assert limit_headers(error.value.admission)["x-ratelimit-remaining-requests"] == "0"
    assert (await admissions.admit(req("other", rpm=5))).allowed  # per client
    clock.t += 55.01
    assert (await admissions.admit(req(rpm=5))).allowed


async def test_tpm_counts_the_settled_tokens():
    clock = Clock()
    admissions = MemoryAdmissions(clock)
    first = await admissions.admit(req(tpm=1000, tokens=100))
    assert first.allowed
    admissions.settle(first, 900, 0.0)
    refused = await admissions.admit(req(tpm=1000, tokens=200))
    assert not refused.allowed and refused.refused == "tokens"
    assert (await admissions.admit(req(tpm=1000, tokens=50))).allowed
    clock.t += 61
    assert (await admissions.admit(req(tpm=1000, tokens=900))).allowed


async def test_budget_reservations_hold_under_concurrency():
    clock = Clock()
    admissions = MemoryAdmissions(clock)

    async def one() -> bool:
        admission = await admissions.admit(req(budget=1.0, cost=0.1))
        if not admission.allowed:
            return False
        await asyncio.sleep(0.01)  # the upstream call
        admissions.settle(admission, 10, 0.1)
        return True

    results = await asyncio.gather(*(one() for _ in range(100)))
    assert results.count(True) == 10
    assert await admissions.spent("c", utc_month(clock())) == pytest.approx(1.0)


async def test_budget_released_on_failure_and_refusal_is_insufficient_quota():
    admissions = MemoryAdmissions(Clock())
    failed = await admissions.admit(req(budget=0.5, cost=0.5))
    admissions.release(failed)  # a failed request costs nothing
    free = await admissions.admit(req(budget=0.5, cost=0.5))
    admissions.settle(free, 0, 0.0)  # nor does an answer that cost nothing
    reservation = await admissions.admit(req(budget=0.5, cost=0.5))
    assert reservation.allowed
    refused = await admissions.admit(req(budget=0.5, cost=0.01))
    assert not refused.allowed and refused.refused == "budget" and refused.ticket == ""
    assert refused.budget_left_usd == 0.0
    # What the client is answered: 429 insufficient_quota, not to be retried.
    client = ClientInfo(id="c", name="c", source="static", monthly_budget_usd=0.5)
    with pytest.raises(BudgetExceeded) as error:
        await accounting(admissions).admit(call(client), BODY, [TARGET])
    err = error.value
    assert (err.status, err.type, err.code) == (429, "insufficient_quota", "budget_exceeded")
    assert error_headers(err)["x-should-retry"] == "false"
    assert err.admission is not None and err.admission.refused == "budget"
    admissions.settle(reservation, 100, 0.2)
    assert (await admissions.admit(req(budget=0.5, cost=0.3))).allowed


async def test_budget_is_per_calendar_month_utc():
    clock = Clock(datetime(2027, 1, 31, 23, 59, tzinfo=UTC).timestamp())
    admissions = MemoryAdmissions(clock)
    admissions.settle(await admissions.admit(req(budget=1.0, cost=1.0)), 10, 1.0)
    assert not (await admissions.admit(req(budget=1.0, cost=0.01))).allowed
    assert await admissions.spent("c", "2027-01") == 1.0
    clock.t += 120  # February
    assert (await admissions.admit(req(budget=1.0, cost=1.0))).allowed
    assert await admissions.spent("c", "2027-02") == 0.0


def test_pricing_config_overrides_genai_prices_and_unknown_is_zero():
    pricing = Pricing(
        {
            "up/gpt-4o-mini": PriceConfig(input_per_mtok=1, output_per_mtok=2),
            "cheap": PriceConfig(input_per_mtok=0.5, output_per_mtok=0.5),
        }
    )
    own = pricing.rates("up", "gpt-4o-mini")
    assert own.source == "config" and own.cost(Usage(1_000_000, 1_000_000)) == pytest.approx(3)
    assert pricing.rates("other", "cheap").cost(Usage(2_000_000, 0)) == pytest.approx(1)
    known = pricing.rates("other", "gpt-4o-mini")
    assert known.source == "genai-prices"
    assert known.cost(Usage(1_000_000, 1_000_000)) == pytest.approx(0.75)
    assert known.cost(Usage(1_000_000, 0, cached_tokens=1_000_000)) == pytest.approx(0.075)
    unknown = pricing.rates("local", "my-own-finetune-xyz")
    assert not unknown.known and unknown.cost(Usage(10**6, 10**6)) == 0
    fallback = Pricing({"*": PriceConfig(input_per_mtok=3, output_per_mtok=3)})
    assert fallback.rates("local", "my-own-finetune-xyz").source == "default"


def test_weekly_key_matches_the_spec_and_rotates_on_monday_utc():
    import hashlib
    import hmac

    sunday = datetime(2027, 1, 10, 23, 59, 59, tzinfo=UTC)
    monday = sunday + timedelta(seconds=1)
    assert week_label(sunday) == "2027-W01" and week_label(monday) == "2027-W02"
    expected = "sk-" + hmac.new(b"s3cret", b"2027-W01", hashlib.sha256).hexdigest()[:16]
    assert weekly_key("s3cret", sunday) == expected and len(expected) == 19
    assert weekly_key("s3cret", monday) != expected
    assert is_current(expected, "s3cret", sunday) and not is_current(expected, "s3cret", monday)
    info = current_key_info("s3cret", sunday)
    assert info == {"api_key": expected, "expiry": "2027-01-11T00:00:00Z", "days_remaining": 0}
    assert current_key_info("s3cret", monday)["days_remaining"] == 7
