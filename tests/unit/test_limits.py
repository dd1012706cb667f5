"""Rate limits, budgets, prices and the weekly key on their own (injectable clocks)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from relaygate.auth.weekly import current_key_info, is_current, week_label, weekly_key
from relaygate.config.model import PriceConfig
from relaygate.errors import BudgetExceeded, RateLimitExceeded
from relaygate.limits.budgets import Budgets
from relaygate.limits.pricing import Pricing
from relaygate.limits.ratelimit import RateLimiter
from relaygate.types import Usage


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_rpm_5_the_sixth_request_in_the_minute_is_refused_with_retry_after():
    clock = Clock()
    limiter = RateLimiter(clock)
    remaining = []
    for _ in range(5):
        admitted = limiter.admit("c", rpm=5, tpm=None, est_tokens=10)
        remaining.append(int(admitted.headers["x-ratelimit-remaining-requests"]))
        clock.t += 1
    assert remaining == [4, 3, 2, 1, 0]
    with pytest.raises(RateLimitExceeded) as refused:
        limiter.admit("c", rpm=5, tpm=None, est_tokens=10)
    assert refused.value.status == 429 and refused.value.code == "rate_limit_exceeded"
    assert refused.value.headers["retry-after"] == "55"
    assert refused.value.headers["x-ratelimit-remaining-requests"] == "0"
    limiter.admit("other", rpm=5, tpm=None, est_tokens=10)  # per client
    clock.t += 55.01
    limiter.admit("c", rpm=5, tpm=None, est_tokens=10)


def test_tpm_counts_the_settled_tokens():
    clock = Clock()
    limiter = RateLimiter(clock)
    first = limiter.admit("c", rpm=None, tpm=1000, est_tokens=100)
    first.settle(900)
    with pytest.raises(RateLimitExceeded):
        limiter.admit("c", rpm=None, tpm=1000, est_tokens=200)
    limiter.admit("c", rpm=None, tpm=1000, est_tokens=50)
    clock.t += 61
    limiter.admit("c", rpm=None, tpm=1000, est_tokens=900)


def test_budget_reservations_hold_under_concurrency():
    budgets = Budgets(Clock())

    async def one() -> bool:
        try:
            reservation = budgets.reserve("c", budget=1.0, amount=0.1)
        except BudgetExceeded:
            return False
        await asyncio.sleep(0.01)  # the upstream call
        reservation.settle(0.1)
        return True

    async def burst() -> list[bool]:
        return await asyncio.gather(*(one() for _ in range(100)))

    results = asyncio.run(burst())
    assert results.count(True) == 10
    assert budgets.spent("c") == pytest.approx(1.0)


def test_budget_released_on_failure_and_refusal_is_insufficient_quota():
    budgets = Budgets(Clock())
    budgets.reserve("c", budget=0.5, amount=0.5).settle(0.0)  # a failed request costs nothing
    reservation = budgets.reserve("c", budget=0.5, amount=0.5)
    with pytest.raises(BudgetExceeded) as refused:
        budgets.reserve("c", budget=0.5, amount=0.01)
    err = refused.value
    assert (err.status, err.type, err.code) == (429, "insufficient_quota", "budget_exceeded")
    assert err.headers["x-should-retry"] == "false"
    reservation.settle(0.2)
    budgets.reserve("c", budget=0.5, amount=0.3)


def test_budget_is_per_calendar_month_utc():
    clock = Clock(datetime(2027, 1, 31, 23, 59, tzinfo=UTC).timestamp())
    budgets = Budgets(clock)
    budgets.reserve("c", budget=1.0, amount=1.0).settle(1.0)
    with pytest.raises(BudgetExceeded):
        budgets.reserve("c", budget=1.0, amount=0.01)
    clock.t += 120  # February
    budgets.reserve("c", budget=1.0, amount=1.0)


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
