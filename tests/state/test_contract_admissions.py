"""The Admissions contract (state/protocols.py), on memory and Redis: the checks in order
requests, tokens, budget; a refused request takes nothing; the numbers the answer's headers are
rendered from; settle and release once; and the budget and the rpm holding exactly when two
gateways share one backend under 100 concurrent admissions. The month boundary and the window
sliding are checked on the memory backend, whose clock the test moves (Redis uses its own)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest

from relaygate.state.memory_admissions import MemoryAdmissions, utc_month
from relaygate.state.records import AdmitRequest
from tests.state.conftest import Bounded, req


async def test_no_limits_admits_and_takes_nothing(admissions: Bounded) -> None:
    for _ in range(5):
        adm = await admissions.admit(req())
        assert adm.allowed and adm.refused is None
        admissions.settle(adm, 10, 0.5)
    await admissions.flush()
    assert await admissions.spent("c1", utc_month(time.time())) == 0.0


async def test_rpm_exact_with_header_numbers(admissions: Bounded) -> None:
    first = await admissions.admit(req(rpm=3))
    assert first.allowed and first.rpm == 3
    assert first.remaining_requests == 2
    assert first.reset_requests_s == 60.0  # an empty window
    second = await admissions.admit(req(rpm=3))
    third = await admissions.admit(req(rpm=3))
    assert (second.allowed, second.remaining_requests) == (True, 1)
    assert (third.allowed, third.remaining_requests) == (True, 0)
    assert 58.0 < third.reset_requests_s <= 60.0  # the oldest request's end
    fourth = await admissions.admit(req(rpm=3))
    assert not fourth.allowed and fourth.refused == "requests"
    assert fourth.remaining_requests == 0
    assert fourth.retry_after_s == 60  # max(1, ceil(oldest + 60 - now))
    assert fourth.ticket == ""
    other = await admissions.admit(req("c2", rpm=3))  # another client's window
    assert other.allowed and other.remaining_requests == 2


async def test_tpm_exact(admissions: Bounded) -> None:
    a = await admissions.admit(req(tpm=100, tokens=40))
    assert a.allowed and a.tpm == 100 and a.remaining_tokens == 60 and a.tokens == 40
    b = await admissions.admit(req(tpm=100, tokens=40))
    assert b.allowed and b.remaining_tokens == 20
    c = await admissions.admit(req(tpm=100, tokens=21))  # 80 + 21 > 100
    assert not c.allowed and c.refused == "tokens"
    assert c.remaining_tokens == 0
    assert 60 <= c.retry_after_s <= 61  # ceil(oldest bucket second + 1 + 60 - now)
    d = await admissions.admit(req(tpm=100, tokens=20))  # exactly 100: the refusal took nothing
    assert d.allowed and d.remaining_tokens == 0
    e = await admissions.admit(req(tpm=100, tokens=1))
    assert not e.allowed and e.refused == "tokens"


async def test_first_request_bigger_than_tpm_is_admitted_alone(admissions: Bounded) -> None:
    big = await admissions.admit(req(tpm=100, tokens=150))
    assert big.allowed and big.remaining_tokens == 0
    small = await admissions.admit(req(tpm=100, tokens=1))
    assert not small.allowed and small.refused == "tokens"


async def test_requests_are_checked_before_tokens(admissions: Bounded) -> None:
    assert (await admissions.admit(req(rpm=1, tpm=10, tokens=10))).allowed
    both = await admissions.admit(req(rpm=1, tpm=10, tokens=10))
    assert both.refused == "requests"


async def test_budget_exact_to_the_cent(admissions: Bounded) -> None:
    lefts = []
    for _ in range(3):
        adm = await admissions.admit(req(budget=0.30, cost=0.10))
        assert adm.allowed and adm.budget_usd == 0.30 and adm.cost_usd == pytest.approx(0.10)
        assert adm.month == utc_month(time.time())
        lefts.append(adm.budget_left_usd)
    assert lefts == pytest.approx([0.20, 0.10, 0.0], abs=1e-9)
    over = await admissions.admit(req(budget=0.30, cost=0.01))
    assert not over.allowed and over.refused == "budget"
    assert over.budget_left_usd == pytest.approx(0.0, abs=1e-9)


async def test_budget_refusal_reports_what_is_left(admissions: Bounded) -> None:
    assert (await admissions.admit(req(budget=1.0, cost=0.75))).allowed
    over = await admissions.admit(req(budget=1.0, cost=0.26))
    assert (over.allowed, over.refused) == (False, "budget")
    assert over.budget_left_usd == pytest.approx(0.25)
    exact = await admissions.admit(req(budget=1.0, cost=0.25))
    assert exact.allowed and exact.budget_left_usd == pytest.approx(0.0, abs=1e-9)


async def test_a_refused_request_takes_nothing(admissions: Bounded) -> None:
    # refused by its budget: neither its request slot nor its tokens are taken
    assert (await admissions.admit(req(rpm=2, tpm=100, tokens=50, budget=1.0, cost=0.6))).allowed
    refused = await admissions.admit(req(rpm=2, tpm=100, tokens=50, budget=1.0, cost=0.6))
    assert refused.refused == "budget"
    last = await admissions.admit(req(rpm=2, tpm=100, tokens=50, budget=1.0, cost=0.4))
    assert last.allowed
    assert last.remaining_requests == 0 and last.remaining_tokens == 0
    assert last.budget_left_usd == pytest.approx(0.0, abs=1e-9)
    # refused by its requests: no reservation is taken
    assert (await admissions.admit(req("c9", rpm=1, budget=1.0, cost=0.5))).allowed
    assert (await admissions.admit(req("c9", rpm=1, budget=1.0, cost=0.5))).refused == "requests"
    assert (await admissions.admit(req("c9", budget=1.0, cost=0.5))).allowed


async def test_settle_replaces_estimate_and_reservation_once(admissions: Bounded) -> None:
    month = utc_month(time.time())
    adm = await admissions.admit(req(tpm=100, tokens=80, budget=1.0, cost=0.5))
    assert adm.allowed and adm.ticket
    admissions.settle(adm, 10, 0.2)
    assert adm.settled
    admissions.settle(adm, 80, 0.5)  # a second settle does nothing
    admissions.release(adm)  # nor does a release after it
    await admissions.flush()
    assert await admissions.spent("c1", month) == pytest.approx(0.2)
    fits = await admissions.admit(req(tpm=100, tokens=90, budget=1.0, cost=0.8))
    assert fits.allowed  # 10 + 90 tokens, 0.2 + 0.8 dollars
    assert fits.remaining_tokens == 0 and fits.budget_left_usd == pytest.approx(0.0, abs=1e-9)
    assert (await admissions.admit(req(tpm=100, tokens=1, budget=1.0, cost=0.0))).refused == (
        "tokens"
    )
    assert (await admissions.admit(req(budget=1.0, cost=0.01))).refused == "budget"


async def test_release_takes_everything_back_once(admissions: Bounded) -> None:
    month = utc_month(time.time())
    a = await admissions.admit(req(rpm=2, tpm=100, tokens=100, budget=1.0, cost=1.0))
    b = await admissions.admit(req(rpm=2))
    assert a.allowed and b.allowed
    admissions.release(a)
    admissions.release(a)  # once: b's request slot stays taken
    assert a.settled
    await admissions.flush()
    assert await admissions.spent("c1", month) == 0.0
    again = await admissions.admit(req(rpm=2, tpm=100, tokens=100, budget=1.0, cost=1.0))
    assert again.allowed and again.remaining_requests == 0 and again.remaining_tokens == 0
    assert (await admissions.admit(req(rpm=2))).refused == "requests"


async def test_seed_spend_only_where_no_account(admissions: Bounded) -> None:
    month = utc_month(time.time())
    await admissions.seed_spend(month, {"c1": 0.7})
    assert await admissions.spent("c1", month) == pytest.approx(0.7)
    await admissions.seed_spend(month, {"c1": 0.1, "c2": 0.4})  # c1 has an account now
    assert await admissions.spent("c1", month) == pytest.approx(0.7)
    assert await admissions.spent("c2", month) == pytest.approx(0.4)
    assert (await admissions.admit(req(budget=1.0, cost=0.3))).allowed
    assert (await admissions.admit(req(budget=1.0, cost=0.01))).refused == "budget"
    # an account opened by an admission is not overwritten by a seed either
    adm = await admissions.admit(req("c3", budget=1.0, cost=0.5))
    admissions.settle(adm, 0, 0.5)
    await admissions.flush()
    await admissions.seed_spend(month, {"c3": 0.0})
    assert await admissions.spent("c3", month) == pytest.approx(0.5)


async def test_two_gateways_share_a_budget_and_an_rpm(
    admissions_pair: tuple[Bounded, Bounded],
) -> None:
    one, two = admissions_pair

    async def storm(request: AdmitRequest) -> int:
        results = await asyncio.gather(
            *((one if i % 2 else two).admit(request) for i in range(100))
        )
        return sum(a.allowed for a in results)

    assert await storm(req("budgeted", budget=1.0, cost=0.1)) == 10
    assert await storm(req("limited", rpm=20)) == 20
    assert await storm(req("tokens", tpm=1000, tokens=100)) == 10


# --- on the memory backend, whose clock the test moves ---------------------------------------
class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


async def test_memory_window_slides() -> None:
    clock = Clock(1_000_000.5)
    adm = MemoryAdmissions(clock)
    assert (await adm.admit(req(rpm=2, tpm=100, tokens=60))).allowed
    clock.t += 30
    second = await adm.admit(req(rpm=2, tpm=100, tokens=40))
    assert second.reset_requests_s == 30.0 and second.remaining_tokens == 0
    refused = await adm.admit(req(rpm=2))
    assert refused.refused == "requests" and refused.retry_after_s == 30
    clock.t += 30  # the first request is 60 s old: out of the window
    third = await adm.admit(req(rpm=2))
    assert third.allowed and third.remaining_requests == 0 and third.reset_requests_s == 30.0
    # tokens leave by whole seconds: the first bucket (second 1_000_000) at 1_000_061
    tokens = await adm.admit(req(tpm=100, tokens=60))
    assert tokens.refused == "tokens" and tokens.retry_after_s == 1  # max(1, ceil(0.5))
    clock.t = 1_000_061.0
    assert (await adm.admit(req(tpm=100, tokens=60))).allowed


async def test_memory_tokens_retry_after_counts_the_bucket_second() -> None:
    clock = Clock(2_000_000.25)
    adm = MemoryAdmissions(clock)
    assert (await adm.admit(req(tpm=10, tokens=10))).allowed
    refused = await adm.admit(req(tpm=10, tokens=1))
    assert refused.retry_after_s == 61  # ceil(2_000_000 + 1 + 60 - 2_000_000.25)


async def test_memory_month_turns() -> None:
    clock = Clock(_utc(2026, 1, 31, 23, 59, 59))
    adm = MemoryAdmissions(clock)
    january = await adm.admit(req(budget=1.0, cost=0.6))
    assert january.allowed and january.month == "2026-01"
    clock.t = _utc(2026, 2, 1, 0, 0, 1)
    february = await adm.admit(req(budget=1.0, cost=0.9))
    assert february.allowed and february.month == "2026-02"
    assert february.budget_left_usd == pytest.approx(0.1)
    adm.settle(january, 0, 0.6)  # made last month: February's account is left alone
    assert await adm.spent("c1", "2026-02") == 0.0
    assert (await adm.admit(req(budget=1.0, cost=0.1))).allowed
    assert (await adm.admit(req(budget=1.0, cost=0.01))).refused == "budget"
    adm.settle(february, 0, 0.9)
    assert await adm.spent("c1", "2026-02") == pytest.approx(0.9)


async def test_memory_seed_of_an_older_month_leaves_this_month_alone() -> None:
    clock = Clock(_utc(2026, 3, 1, 0, 0, 5))
    adm = MemoryAdmissions(clock)
    await adm.seed_spend("2026-03", {"c1": 0.25})
    await adm.seed_spend("2026-02", {"c1": 5.0})
    assert await adm.spent("c1", "2026-03") == 0.25
    await adm.seed_spend("2026-02", {"c2": 0.5})
    clock.t = _utc(2026, 3, 1, 0, 0, 6)
    fresh = await adm.admit(req("c2", budget=1.0, cost=1.0))  # last month's seed is not March's
    assert fresh.allowed and fresh.month == "2026-03"
