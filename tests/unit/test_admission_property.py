"""Property tests for admission (SPEC §6, §8a): budgets and rate limits hold for any interleaving.

Hypothesis drives `MemoryAdmissions` and `Accounting` on fake clocks (in memory: no socket, no
database; each machine runs its coroutines on a private event loop) through random interleavings
of admitting requests for several clients with random worst-case amounts, settling them with a
real cost anywhere in [0, reserved], releasing them, settling or releasing the same admission
twice, and time moving on, across UTC month boundaries too. After every step:

- Budgets: spent <= budget and spent + reserved <= budget (float epsilon); a refused admission
  takes nothing (no budget, no rate slot, no token, no ticket), and is refused only when it does
  not fit; a second settle or release is a no-op; reserved is exactly what is outstanding this
  month, so once every admission is settled or released it is back to 0, and spent is the sum of
  the real costs of this month's admissions; every month's account holds what was settled for
  that month, however late; the outstanding tickets are exactly the admissions not yet settled.
- Rate windows: requests, then tokens, then budget decide, exactly as a model of the window
  predicts (with the numbers the answer's headers show); in no 60 s window were more than `rpm`
  requests admitted and not released; a release frees its slot; the window's token total is the
  settled (or estimated) tokens still in it, never negative.
- Accounting.admit/finish: the same budget invariants through the real admission path, the
  reservation covers the worst case of the body, a budget refusal takes no rate-limit slot, and
  finish settles once however often it is called.

A reservation made in one month and settled in the next (a request running over midnight at the
end of a month) leaves the new month's account alone: two tests below check it (they found the
bug that replaced the new month's account and forgot its spend).
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from relaygate.accounting import Accounting, Call
from relaygate.auth.clients import ClientInfo
from relaygate.config.model import Config
from relaygate.errors import BudgetExceeded, RateLimitExceeded
from relaygate.gateway import build_providers
from relaygate.http.headers import error_headers
from relaygate.state.memory_admissions import WINDOW_S, MemoryAdmissions, utc_month
from relaygate.state.records import Admission, AdmitRequest
from relaygate.types import Target, Usage

T = TypeVar("T")

EPS = 1e-9
CLIENTS = ("a", "b")

SETTINGS = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    derandomize=True,
    database=None,
)


def _utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


# A few minutes before the end of a month (and of a year, and of a short February).
STARTS = (_utc(2026, 1, 31, 23, 57), _utc(2026, 2, 28, 23, 59, 30), _utc(2026, 12, 31, 23, 58))
MID_MONTH = _utc(2026, 3, 14, 12, 0)


class Clock:
    def __init__(self, t: float = STARTS[0]) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def next_month_start(t: float) -> float:
    d = datetime.fromtimestamp(t, UTC)
    year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return _utc(year, month, 1)


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=0.0, abs_tol=EPS)


BUDGET = st.sampled_from([0.0, 0.25, 1.0]) | st.floats(0.0, 5.0)
AMOUNT = st.sampled_from([0.0, 0.1, 0.25, 0.5]) | st.floats(0.0, 2.0)
FRACTION = st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0)
ADVANCE = st.floats(0.0, 120.0) | st.sampled_from([3600.0, 86_400.0, 40 * 86_400.0])


def held_state(admissions: MemoryAdmissions, now: float) -> tuple[Any, ...]:
    """What the admissions hold at `now`, as the next admission sees it: each client's account of
    this month, the requests and token buckets inside the window, the outstanding tickets. An
    admission trims what has left the window and opens an empty account for a new month: neither
    is a change, so both are left out (an empty account, an empty window)."""
    month, edge = utc_month(now), now - WINDOW_S
    accounts = {
        client: (account.spent, account.reserved)
        for client, account in admissions._accounts.items()
        if account.month == month and (account.spent, account.reserved) != (0.0, 0.0)
    }
    windows = {}
    for client, window in admissions._windows.items():
        requests = tuple(t for t in window.requests if t > edge)
        buckets = tuple((b[0], b[1]) for b in window.tokens if b[0] + 1 > edge)
        if requests or buckets:
            windows[client] = (requests, buckets)
    return accounts, windows, frozenset(admissions._holds)


class OnALoop(RuleBasedStateMachine):
    """A machine with a private event loop: each step runs its coroutines to their end."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.loop.close()


# ---------------------------------------------------------------------------------------- budgets


@dataclass(eq=False)
class Held:
    client: str
    month: str
    amount: float
    admission: Admission = field(repr=False)
    account: Any = field(repr=False)  # the account the reservation was made in
    cost: float | None = None  # the real cost it was settled with (0 released); None while held


class BudgetMachine(OnALoop):
    # Settle reservations of a month that has ended too (see BudgetAcrossMonthsMachine)?
    settle_past_months = False

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.admissions = MemoryAdmissions(clock=self.clock)
        self.limit: dict[str, float] = {}
        self.windows: tuple[int | None, int | None] = (None, None)
        self.held: list[Held] = []
        self.spent_in: dict[tuple[str, str], float] = defaultdict(float)  # (client, month)

    @initialize(
        start=st.sampled_from(STARTS), limits=st.tuples(BUDGET, BUDGET), windowed=st.booleans()
    )
    def setup(self, start: float, limits: tuple[float, float], windowed: bool) -> None:
        self.clock.t = start
        self.limit = dict(zip(CLIENTS, limits, strict=True))
        # Rate windows too (never reached), so a budget refusal's taking no slot is seen.
        self.windows = (10**6, 10**9) if windowed else (None, None)

    # -- reading the state

    def month(self) -> str:
        return utc_month(self.clock())

    def observed(self, client: str) -> tuple[float, float]:
        """(spent, reserved) of this month, as the admissions hold them."""
        month = self.month()
        account = self.admissions._accounts.get(client)
        reserved = account.reserved if account is not None and account.month == month else 0.0
        return self.run(self.admissions.spent(client, month)), reserved

    def expected(self, client: str, month: str | None = None) -> tuple[float, float]:
        """(spent, reserved) of a month (this one by default), from what the test did."""
        month = month or self.month()
        mine = [h for h in self.held if h.client == client and h.cost is None and h.month == month]
        return self.spent_in[(client, month)], math.fsum(h.amount for h in mine)

    def snapshot(self) -> tuple[Any, ...]:
        """All the admissions hold, the accounts of months that have ended included."""
        accounts = {id(h.account): h.account for h in self.held}
        raw = sorted((a.month, a.spent, a.reserved) for a in accounts.values())
        return held_state(self.admissions, self.clock()), raw

    def settleable(self) -> list[Held]:
        month = self.month()
        return [
            h for h in self.held if h.cost is None and (self.settle_past_months or h.month == month)
        ]

    # -- rules

    def _reserve(self, client: str, amount: float) -> None:
        before = self.snapshot()
        spent, reserved = self.expected(client)
        limit = self.limit[client]
        rpm, tpm = self.windows
        request = AdmitRequest(client, rpm, tpm, 100, limit, amount)
        admission = self.run(self.admissions.admit(request))
        assert admission.month == self.month()
        if not admission.allowed:
            assert admission.refused == "budget", admission
            assert admission.ticket == ""
            assert self.snapshot() == before, "a refused admission took something"
            assert spent + reserved + amount > limit - EPS, "refused though it fits"
            assert close(admission.budget_left_usd, max(0.0, limit - spent - reserved))
            return
        assert admission.refused is None and admission.ticket
        assert admission.cost_usd == amount
        assert close(admission.budget_left_usd, limit - spent - reserved - amount)
        account = self.admissions._accounts[client]
        assert account.month == admission.month
        self.held.append(Held(client, admission.month, amount, admission, account))

    @rule(client=st.sampled_from(CLIENTS), amount=AMOUNT)
    def reserve(self, client: str, amount: float) -> None:
        self._reserve(client, amount)

    @rule(
        client=st.sampled_from(CLIENTS),
        nudge=st.sampled_from([0.0, 1e-13, -1e-13, 1e-10, -1e-10, 1e-6, -1e-6]),
    )
    def reserve_what_is_left(self, client: str, nudge: float) -> None:
        """Right at the edge: exactly what is left of the budget, give or take a hair."""
        spent, reserved = self.observed(client)
        self._reserve(client, max(0.0, self.limit[client] - spent - reserved + nudge))

    def _settle(self, held: Held, cost: float, tokens: int = 0) -> None:
        assert 0.0 <= cost <= held.amount
        self.admissions.settle(held.admission, tokens, cost)
        assert held.admission.settled
        held.cost = cost
        self.spent_in[(held.client, held.month)] += cost

    @precondition(lambda self: bool(self.settleable()))
    @rule(data=st.data(), fraction=FRACTION, tokens=st.integers(0, 1000))
    def settle(self, data: st.DataObject, fraction: float, tokens: int) -> None:
        held = data.draw(st.sampled_from(self.settleable()), label="held")
        self._settle(held, held.amount * fraction, tokens)

    @precondition(lambda self: bool(self.settleable()))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        """A failed, cancelled or abandoned request."""
        held = data.draw(st.sampled_from(self.settleable()), label="held")
        self.admissions.release(held.admission)
        assert held.admission.settled
        held.cost = 0.0

    @precondition(lambda self: any(h.cost is not None for h in self.held))
    @rule(data=st.data(), cost=st.floats(0.0, 10.0), release=st.booleans())
    def settle_again(self, data: st.DataObject, cost: float, release: bool) -> None:
        held = data.draw(st.sampled_from([h for h in self.held if h.cost is not None]))
        before = self.snapshot()
        if release:
            self.admissions.release(held.admission)
        else:
            self.admissions.settle(held.admission, 10**6, cost)
        assert self.snapshot() == before, "a second settle or release changed the budgets"

    @rule(seconds=ADVANCE)
    def advance(self, seconds: float) -> None:
        self.clock.t += seconds

    @rule(offset=st.sampled_from([-1.0, -0.001, 0.0, 0.001, 1.0]))
    def to_next_month(self, offset: float) -> None:
        self.clock.t = max(self.clock.t, next_month_start(self.clock.t) + offset)

    # -- invariants

    @invariant()
    def budgets_hold(self) -> None:
        for client in CLIENTS:
            spent, reserved = self.observed(client)
            want_spent, want_reserved = self.expected(client)
            limit = self.limit[client]
            assert spent <= limit + EPS, f"{client} spent {spent} of {limit}"
            assert spent + reserved <= limit + EPS, f"{client}: {spent} + {reserved} > {limit}"
            assert reserved >= 0.0
            assert close(spent, want_spent), f"{client} spent {spent}, settled {want_spent}"
            assert close(reserved, want_reserved), f"{client} holds {reserved}, {want_reserved}"
        for held in self.held:  # every month's account, this one's or one that has ended
            account = held.account
            want_spent, want_reserved = self.expected(held.client, account.month)
            assert close(account.spent, want_spent), f"{account.month}: {account.spent}"
            assert close(account.reserved, want_reserved), f"{account.month}: {account.reserved}"
            assert account.spent <= self.limit[held.client] + EPS
        outstanding = {h.admission.ticket for h in self.held if h.cost is None}
        assert set(self.admissions._holds) == outstanding, "tickets are not the outstanding ones"

    def teardown(self) -> None:
        try:
            if self.limit:
                for held in self.settleable():
                    self._settle(held, held.amount / 2)
                self.budgets_hold()
                for client in CLIENTS:
                    assert close(self.observed(client)[1], 0.0), "reserved is not back to 0"
                if self.settle_past_months:
                    assert not self.admissions._holds, "a settled admission kept its ticket"
        finally:
            super().teardown()


class BudgetAcrossMonthsMachine(BudgetMachine):
    settle_past_months = True


def test_budgets_hold_for_any_interleaving() -> None:
    run_state_machine_as_test(BudgetMachine, settings=SETTINGS)


def test_budgets_hold_when_reservations_are_settled_in_a_later_month() -> None:
    run_state_machine_as_test(BudgetAcrossMonthsMachine, settings=SETTINGS)


@SETTINGS
@given(
    limit=BUDGET,
    amounts=st.lists(AMOUNT, max_size=40),
    data=st.data(),
)
def test_parallel_reservations_never_overspend(
    limit: float, amounts: list[float], data: st.DataObject
) -> None:
    """Many requests admitted concurrently before any finishes, then settled in any order (SPEC
    §6)."""
    admissions = MemoryAdmissions(clock=Clock(MID_MONTH))
    month = utc_month(MID_MONTH)

    async def admit_all() -> list[Admission]:
        return await asyncio.gather(
            *(admissions.admit(AdmitRequest("c", None, None, 0, limit, a)) for a in amounts)
        )

    loop = asyncio.new_event_loop()
    try:
        decided = loop.run_until_complete(admit_all())
        taken: list[Admission] = []
        for amount, admission in zip(amounts, decided, strict=True):  # decided in this order
            if admission.allowed:
                assert admission.cost_usd == amount
                taken.append(admission)
            else:
                assert admission.refused == "budget" and admission.ticket == ""
                assert math.fsum(a.cost_usd for a in taken) + amount > limit - EPS
        assert math.fsum(a.cost_usd for a in taken) <= limit + EPS
        if amounts:
            reserved = admissions._accounts["c"].reserved
            assert close(reserved, math.fsum(a.cost_usd for a in taken))
        order = data.draw(st.permutations(range(len(taken))), label="order")
        costs = data.draw(st.lists(FRACTION, min_size=len(taken), max_size=len(taken)))
        settled = 0.0
        for i in order:
            admissions.settle(taken[i], 0, taken[i].cost_usd * costs[i])
            admissions.settle(taken[i], 0, taken[i].cost_usd)  # a second settle is a no-op
            admissions.release(taken[i])  # and so is a release after it
            settled += taken[i].cost_usd * costs[i]
            assert loop.run_until_complete(admissions.spent("c", month)) <= limit + EPS
        assert close(loop.run_until_complete(admissions.spent("c", month)), settled)
        account = admissions._accounts.get("c")
        assert account is None or close(account.reserved, 0.0)
        assert not admissions._holds
    finally:
        loop.close()


@SETTINGS
@given(
    first=st.floats(0.01, 1.0),
    second=st.floats(0.01, 1.0),
    fraction=FRACTION,
    release=st.booleans(),
)
def test_settling_last_months_reservation_leaves_this_month_alone(
    first: float, second: float, fraction: float, release: bool
) -> None:
    """A request admitted at 23:59 on the last day of a month and finished after midnight."""
    clock = Clock(_utc(2026, 1, 31, 23, 59))
    admissions = MemoryAdmissions(clock=clock)
    loop = asyncio.new_event_loop()
    try:
        late = loop.run_until_complete(admissions.admit(AdmitRequest("c", 3, 10**6, 5, 1.0, first)))
        assert late.allowed and late.month == "2026-01"
        clock.t = _utc(2026, 2, 1, 0, 0, 5)
        now = loop.run_until_complete(admissions.admit(AdmitRequest("c", 3, 10**6, 5, 1.0, second)))
        assert now.allowed and now.month == "2026-02"
        if release:
            admissions.release(late)
        else:
            admissions.settle(late, 7, first * fraction)  # January's cost, not February's
        account = admissions._accounts["c"]
        assert account.month == "2026-02" and close(account.reserved, second)
        assert account.spent == 0.0
        assert loop.run_until_complete(admissions.spent("c", "2026-02")) == 0.0
        assert set(admissions._holds) == {now.ticket}
    finally:
        loop.close()


# ----------------------------------------------------------------------------------- rate limits

RPM = st.integers(1, 5) | st.none()
TPM = st.none() | st.integers(1, 2000)
Refusal = Literal["requests", "tokens", "budget", "maybe budget"]


@dataclass(eq=False)
class Slot:
    client: str
    at: float
    admission: Admission = field(repr=False)
    tokens: int  # what the window holds for it: the estimate, then the settled tokens
    cost: float  # what its budget holds for it while outstanding
    settled: bool = False
    released: bool = False

    @property
    def done(self) -> bool:
        return self.settled or self.released


class RateLimitMachine(OnALoop):
    """Rate windows, and budgets with them: the checks in order requests, tokens, budget."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock(MID_MONTH)  # 50 steps of at most 90 s stay inside the month
        self.admissions = MemoryAdmissions(clock=self.clock)
        self.limits: dict[str, tuple[int | None, int | None, float | None]] = {}
        self.slots: list[Slot] = []
        self.spent: dict[str, float] = defaultdict(float)

    @initialize(
        rpm=st.tuples(RPM, RPM),
        tpm=st.tuples(TPM, TPM),
        budget=st.tuples(st.none() | BUDGET, st.none() | BUDGET),
    )
    def setup(
        self,
        rpm: tuple[int | None, int | None],
        tpm: tuple[int | None, int | None],
        budget: tuple[float | None, float | None],
    ) -> None:
        self.limits = {c: (rpm[i], tpm[i], budget[i]) for i, c in enumerate(CLIENTS)}

    def live(self, client: str) -> list[Slot]:
        """Holding a request slot: admitted with an rpm, not released, still inside the window."""
        if self.limits[client][0] is None:
            return []
        edge = self.clock.t - WINDOW_S
        return [s for s in self.slots if s.client == client and not s.released and s.at > edge]

    def in_token_window(self, client: str) -> list[Slot]:
        """Whose one-second token bucket is still inside the window (released ones too: their
        bucket stays, with 0 tokens of theirs in it)."""
        if self.limits[client][1] is None:
            return []
        edge = self.clock.t - WINDOW_S
        return [s for s in self.slots if s.client == client and float(int(s.at)) + 1 > edge]

    def reserved(self, client: str) -> float:
        return math.fsum(s.cost for s in self.slots if s.client == client and not s.done)

    @rule(client=st.sampled_from(CLIENTS), est=st.integers(0, 600), cost=AMOUNT)
    def admit(self, client: str, est: int, cost: float) -> None:
        rpm, tpm, budget = self.limits[client]
        now = self.clock.t
        live = self.live(client)
        buckets = self.in_token_window(client)
        used = sum(s.tokens for s in buckets)
        spent, reserved = self.spent[client], self.reserved(client)
        expect: Refusal | None = None
        if rpm is not None and len(live) >= rpm:
            expect = "requests"
        elif tpm is not None and buckets and used + est > tpm:
            expect = "tokens"
        elif budget is not None and spent + reserved + cost > budget + EPS:
            expect = "budget"
        elif budget is not None and spent + reserved + cost > budget - EPS:
            expect = "maybe budget"  # at the edge: float sums may fall either side
        before = held_state(self.admissions, now)
        request = AdmitRequest(client, rpm, tpm, est, budget, cost)
        admission = self.run(self.admissions.admit(request))
        assert (admission.rpm, admission.tpm, admission.budget_usd) == (rpm, tpm, budget)
        if rpm is not None:  # what x-ratelimit-*-requests show
            reset = min(s.at for s in live) + WINDOW_S - now if live else WINDOW_S
            assert admission.remaining_requests == max(0, rpm - len(live) - 1)
            assert admission.reset_requests_s == reset
        if tpm is not None and expect != "requests":
            assert admission.remaining_tokens == max(0, int(tpm - used - est))
        if not admission.allowed:
            assert expect is not None, (
                f"refused ({admission.refused}) with {len(live)}/{rpm} requests, "
                f"{used}+{est}/{tpm} tokens, {spent}+{reserved}+{cost}/{budget} USD"
            )
            assert admission.refused == expect or (
                expect == "maybe budget" and admission.refused == "budget"
            ), f"refused by {admission.refused}, expected {expect}"
            assert admission.ticket == ""
            assert held_state(self.admissions, now) == before, "a refused admission took something"
            if expect == "requests":
                assert rpm is not None
                reset = min(s.at for s in live) + WINDOW_S - now
                assert admission.retry_after_s == max(1, math.ceil(reset)) >= 1
            elif expect == "tokens":
                first = min(float(int(s.at)) for s in buckets)
                assert admission.retry_after_s == max(1, math.ceil(first + 1 + WINDOW_S - now))
            else:
                assert close(admission.budget_left_usd, max(0.0, (budget or 0) - spent - reserved))
        else:
            assert expect in (None, "maybe budget"), f"admitted over the {expect} limit"
            assert admission.refused is None
            limited = rpm is not None or tpm is not None or budget is not None
            assert bool(admission.ticket) == limited, "a ticket without limits, or none with"
            held = cost if budget is not None else 0.0
            assert admission.cost_usd == held
            tokens = est if tpm is not None else 0
            self.slots.append(Slot(client, now, admission, tokens, held))
        self.window_matches(client)

    def window_matches(self, client: str) -> None:
        """Right after an admission (which trims the window): the window counts what we count."""
        rpm, tpm, _ = self.limits[client]
        window = self.admissions._windows.get(client)
        if rpm is None and tpm is None:
            assert window is None, "a window for a client without rate limits"
            return
        assert window is not None
        assert len(window.requests) == len(self.live(client)), "a released slot was not freed"
        assert window.token_total >= 0
        assert window.token_total == sum(s.tokens for s in self.in_token_window(client))

    @precondition(lambda self: any(not s.done for s in self.slots))
    @rule(data=st.data(), tokens=st.integers(0, 1200), fraction=FRACTION)
    def settle(self, data: st.DataObject, tokens: int, fraction: float) -> None:
        slot = data.draw(st.sampled_from([s for s in self.slots if not s.done]), label="slot")
        cost = slot.cost * fraction
        self.admissions.settle(slot.admission, tokens, cost)
        assert slot.admission.settled
        slot.settled = True
        if self.limits[slot.client][1] is not None:
            slot.tokens = tokens
        self.spent[slot.client] += cost
        slot.cost = 0.0

    @precondition(lambda self: any(not s.done for s in self.slots))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        slot = data.draw(st.sampled_from([s for s in self.slots if not s.done]), label="slot")
        self.admissions.release(slot.admission)
        assert slot.admission.settled
        slot.released = True
        slot.tokens = 0
        slot.cost = 0.0
        window = self.admissions._windows.get(slot.client)
        if window is not None:  # the slot is free at once, before the next admission trims
            edge = self.clock.t - WINDOW_S
            in_window = sum(1 for t in window.requests if t > edge)
            assert in_window == len(self.live(slot.client)), "a release kept its request slot"

    @precondition(lambda self: any(s.done for s in self.slots))
    @rule(data=st.data(), tokens=st.integers(0, 10**6), release=st.booleans())
    def settle_again(self, data: st.DataObject, tokens: int, release: bool) -> None:
        slot = data.draw(st.sampled_from([s for s in self.slots if s.done]), label="slot")
        before = held_state(self.admissions, self.clock.t)
        if release:
            self.admissions.release(slot.admission)
        else:
            self.admissions.settle(slot.admission, tokens, 10.0)
        assert held_state(self.admissions, self.clock.t) == before, "settled or released twice"

    @rule(seconds=st.floats(0.0, 90.0) | st.sampled_from([0.0, 0.5, 59.999, 60.0, 60.001]))
    def advance(self, seconds: float) -> None:
        self.clock.t += seconds

    @invariant()
    def never_more_than_rpm_in_a_minute(self) -> None:
        for client, (rpm, _, _) in self.limits.items():
            if rpm is None:
                continue
            times = [s.at for s in self.slots if s.client == client and not s.released]
            for t in times:
                in_window = sum(1 for u in times if t - WINDOW_S < u <= t)
                assert in_window <= rpm, f"{in_window} requests in the minute up to {t}, rpm {rpm}"

    @invariant()
    def budgets_hold(self) -> None:
        month = utc_month(self.clock.t)
        for client, (_, _, budget) in self.limits.items():
            spent = self.run(self.admissions.spent(client, month))
            account = self.admissions._accounts.get(client)
            if budget is None:
                assert account is None and spent == 0.0, "an account for a client without budget"
                continue
            reserved = account.reserved if account is not None else 0.0
            assert spent <= budget + EPS, f"{client} spent {spent} of {budget}"
            assert spent + reserved <= budget + EPS, f"{client}: {spent} + {reserved} > {budget}"
            assert close(spent, self.spent[client]), f"spent {spent}, settled {self.spent[client]}"
            assert close(reserved, self.reserved(client))
        outstanding = {s.admission.ticket for s in self.slots if not s.done and s.admission.ticket}
        assert set(self.admissions._holds) == outstanding, "tickets are not the outstanding ones"

    def teardown(self) -> None:
        try:
            if self.limits:
                for i, slot in enumerate([s for s in self.slots if not s.done]):
                    if i % 2:
                        self.admissions.release(slot.admission)
                        slot.released = True
                    else:
                        self.admissions.settle(slot.admission, 0, slot.cost)
                        self.spent[slot.client] += slot.cost
                        slot.settled = True
                    slot.cost = 0.0
                self.budgets_hold()
                assert not self.admissions._holds
                for account in self.admissions._accounts.values():
                    assert close(account.reserved, 0.0), "reserved is not back to 0"
        finally:
            super().teardown()


def test_rate_limits_hold_for_any_interleaving() -> None:
    run_state_machine_as_test(RateLimitMachine, settings=SETTINGS)


# ------------------------------------------------------------------------------------- accounting

PER_TOKEN = 0.001  # 1000 USD per million tokens, so a few hundred tokens matter
TARGET = Target("echo", "x")


def accounting_config() -> Config:
    return Config.model_validate(
        {
            "providers": {"echo": {}},
            "pricing": {"echo/x": {"input_per_mtok": 1000, "output_per_mtok": 1000}},
            "clients": [{"name": "c1", "key": "rg-c1-key-0123456789", "monthly_budget_usd": 1}],
            "ledger": {"enabled": False},
        }
    )


@dataclass(eq=False)
class Tracked:
    call: Call
    out: int  # the most output tokens its body allows
    tokens: int  # what the token window holds for it: the estimate, then the real total


class AccountingMachine(OnALoop):
    """Accounting.admit / finish as the gateway calls them, on MemoryAdmissions; one client."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock(MID_MONTH)
        config = accounting_config()
        self.admissions = MemoryAdmissions(clock=self.clock)
        self.acc = Accounting(config, self.admissions, None, build_providers(config), lambda: [])
        self.client = ClientInfo(id="c1", name="c1", source="static")
        self.calls: list[Tracked] = []
        self.spent = 0.0
        self.n = 0

    @initialize(budget=BUDGET, rpm=st.integers(1, 8), tpm=st.none() | st.integers(200, 8000))
    def setup(self, budget: float, rpm: int, tpm: int | None) -> None:
        self.client = ClientInfo(
            id="c1", name="c1", source="static", rpm=rpm, tpm=tpm, monthly_budget_usd=budget
        )

    @property
    def limit(self) -> float:
        assert self.client.monthly_budget_usd is not None
        return self.client.monthly_budget_usd

    @property
    def rpm(self) -> int:
        assert self.client.rpm is not None
        return self.client.rpm

    def account(self) -> tuple[float, float]:
        month = utc_month(self.clock())
        account = self.admissions._accounts.get(self.client.id)
        reserved = account.reserved if account and account.month == month else 0.0
        return self.run(self.admissions.spent(self.client.id, month)), reserved

    def outstanding(self) -> list[Tracked]:
        return [t for t in self.calls if not t.call.done]

    def live(self) -> int:
        edge = self.clock.t - WINDOW_S
        return sum(1 for t in self.calls if t.call.ts > edge)

    def in_token_window(self) -> list[Tracked]:
        if self.client.tpm is None:
            return []
        edge = self.clock.t - WINDOW_S
        return [t for t in self.calls if float(int(t.call.ts)) + 1 > edge]

    def window_requests(self) -> int:
        window = self.admissions._windows.get(self.client.id)
        return len(window.requests) if window is not None else 0

    @rule(prompt=st.integers(0, 400), max_tokens=st.integers(1, 600) | st.none())
    def admit(self, prompt: int, max_tokens: int | None) -> None:
        self.n += 1
        call = Call(f"req_{self.n}", "chat", self.client, False, prompt, ts=self.clock())
        body: dict[str, Any] = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        out = max_tokens or self.acc.config.limits.default_max_output_tokens
        worst = prompt * PER_TOKEN + out * PER_TOKEN
        tpm, live, buckets = self.client.tpm, self.live(), self.in_token_window()
        used = sum(t.tokens for t in buckets)
        over_tokens = tpm is not None and bool(buckets) and used + prompt + out > tpm
        spent, reserved = self.account()
        before = held_state(self.admissions, self.clock.t)
        try:
            self.run(self.acc.admit(call, body, [TARGET]))
        except RateLimitExceeded as error:
            assert live >= self.rpm or over_tokens, f"rate-limited with {live} of {self.rpm}"
            want = "requests" if live >= self.rpm else "tokens"
            assert error.admission is call.admission and call.admission is not None
            assert call.admission.refused == want
            assert int(error_headers(error)["retry-after"]) >= 1
            assert held_state(self.admissions, self.clock.t) == before, "a refusal took something"
        except BudgetExceeded as error:
            assert live < self.rpm and not over_tokens
            assert error.admission is call.admission
            assert self.account() == (spent, reserved), "a refused reservation changed the budget"
            assert held_state(self.admissions, self.clock.t) == before, "a refusal took something"
            assert spent + reserved + worst > self.limit - EPS, "refused though it fits"
            self.acc.finish(call, target=TARGET, key_id=None, status=429)  # the gateway's finally
            assert held_state(self.admissions, self.clock.t) == before, "a refusal was settled"
        else:
            assert live < self.rpm, f"admitted with {live} of {self.rpm}"
            assert not over_tokens, f"admitted with {used}+{prompt + out} of {tpm} tokens"
            admission = call.admission
            assert admission is not None and admission.allowed and admission.ticket
            assert admission.cost_usd >= worst - EPS, "the reservation is short of the worst case"
            self.calls.append(Tracked(call, out, prompt + out if tpm is not None else 0))
        assert self.window_requests() == self.live(), "a refusal kept a rate-limit slot"

    @precondition(lambda self: bool(self.outstanding()))
    @rule(data=st.data(), prompt=FRACTION, completion=FRACTION, answered=st.booleans())
    def finish(self, data: st.DataObject, prompt: float, completion: float, answered: bool) -> None:
        tracked = data.draw(st.sampled_from(self.outstanding()), label="call")
        call = tracked.call
        if answered:
            usage = Usage(int(call.prompt_estimate * prompt), int(tracked.out * completion))
            self.acc.finish(call, target=TARGET, key_id="k", status=200, usage=usage)
            self.spent += usage.prompt_tokens * PER_TOKEN + usage.completion_tokens * PER_TOKEN
            tokens = usage.total_tokens
        else:  # an upstream error, a cancel, a client gone: nothing was used
            self.acc.finish(call, target=TARGET, key_id=None, status=499, error_code="closed")
            tokens = 0
        if self.client.tpm is not None:
            tracked.tokens = tokens
        assert call.done and call.admission is not None and call.admission.settled

    @precondition(lambda self: any(t.call.done for t in self.calls))
    @rule(data=st.data())
    def finish_again(self, data: st.DataObject) -> None:
        done = [t.call for t in self.calls if t.call.done]
        call = data.draw(st.sampled_from(done), label="call")
        before = self.account(), held_state(self.admissions, self.clock.t)
        self.acc.finish(call, target=TARGET, key_id="k", status=200, usage=Usage(10**6, 10**6))
        after = self.account(), held_state(self.admissions, self.clock.t)
        assert after == before, "a second finish settled again"

    @rule(seconds=st.floats(0.0, 90.0))
    def advance(self, seconds: float) -> None:
        self.clock.t += seconds  # 50 steps stay inside the month

    @invariant()
    def budget_holds(self) -> None:
        spent, reserved = self.account()
        holding = math.fsum(
            t.call.admission.cost_usd for t in self.outstanding() if t.call.admission
        )
        assert spent <= self.limit + EPS
        assert spent + reserved <= self.limit + EPS
        assert close(spent, self.spent), f"spent {spent}, settled {self.spent}"
        assert close(reserved, holding), f"reserved {reserved}, outstanding {holding}"
        tickets = {t.call.admission.ticket for t in self.outstanding() if t.call.admission}
        assert set(self.admissions._holds) == tickets, "tickets are not the outstanding calls"

    @invariant()
    def tokens_counted(self) -> None:
        window = self.admissions._windows.get(self.client.id)
        if window is None or self.client.tpm is None:
            return
        edge = self.clock.t - WINDOW_S
        in_window = sum(b[1] for b in window.tokens if b[0] + 1 > edge)
        assert in_window == sum(t.tokens for t in self.in_token_window())

    def teardown(self) -> None:
        try:
            for tracked in self.outstanding():
                self.acc.finish(tracked.call, target=None, key_id=None, status=500, error_code="x")
            self.budget_holds()
            assert close(self.account()[1], 0.0), "reserved is not back to 0"
            assert not self.admissions._holds
        finally:
            super().teardown()


def test_accounting_settles_every_call_once() -> None:
    run_state_machine_as_test(AccountingMachine, settings=SETTINGS)
