"""Property tests for admission (SPEC §6, §8a): budgets and rate limits hold for any interleaving.

Hypothesis drives `Budgets`, `RateLimiter` and `Accounting` on fake clocks (in memory: no socket,
no database) through random interleavings of admitting requests for several clients with random
worst-case amounts, settling them with a real cost anywhere in [0, reserved], releasing them
(settle(0), cancel), settling the same reservation twice, and time moving on, across UTC month
boundaries too. After every step:

- Budgets: spent <= budget and spent + reserved <= budget (float epsilon); a refused reservation
  (BudgetExceeded) changes nothing, and is refused only when it does not fit; a second settle is a
  no-op; reserved is exactly what is outstanding this month, so once every reservation is settled
  or released it is back to 0, and spent is the sum of the real costs of this month's reservations.
- RateLimiter: in no 60 s window were more than `rpm` requests admitted and not cancelled; a
  cancelled admission frees its slot (a request is admitted exactly when the window has room); the
  window's token total is the settled (or estimated) tokens still in it, never negative.
- Accounting.admit/finish: the same budget invariants through the real admission path, the
  reservation covers the worst case of the body, a budget refusal gives its rate-limit slot back,
  and finish settles once however often it is called.

A reservation made in one month and settled in the next (a request running over midnight at the
end of a month) leaves the new month's account alone: two tests below check it (they found the
bug that replaced the new month's account and forgot its spend).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

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
from relaygate.limits.budgets import Budgets, Reservation, month_of
from relaygate.limits.ratelimit import WINDOW_S, Admitted, RateLimiter
from relaygate.types import Target, Usage

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


# ---------------------------------------------------------------------------------------- budgets


@dataclass(eq=False)
class Held:
    client: str
    month: str
    amount: float
    reservation: Reservation = field(repr=False)
    cost: float | None = None  # the real cost it was settled with; None while outstanding


class BudgetMachine(RuleBasedStateMachine):
    # Settle reservations of a month that has ended too (see BudgetAcrossMonthsMachine)?
    settle_past_months = False

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.budgets = Budgets(clock=self.clock)
        self.limit: dict[str, float] = {}
        self.held: list[Held] = []
        self.spent_in: dict[tuple[str, str], float] = defaultdict(float)  # (client, month)

    @initialize(start=st.sampled_from(STARTS), limits=st.tuples(BUDGET, BUDGET))
    def setup(self, start: float, limits: tuple[float, float]) -> None:
        self.clock.t = start
        self.limit = dict(zip(CLIENTS, limits, strict=True))

    # -- reading the state

    def month(self) -> str:
        return month_of(self.clock())

    def observed(self, client: str) -> tuple[float, float]:
        """(spent, reserved) of this month, as Budgets holds them."""
        account = self.budgets._accounts.get(client)
        reserved = account.reserved if account is not None and account.month == self.month() else 0
        return self.budgets.spent(client), reserved

    def expected(self, client: str) -> tuple[float, float]:
        """(spent, reserved) of this month, from what the test did."""
        month = self.month()
        mine = [h for h in self.held if h.client == client and h.cost is None and h.month == month]
        return self.spent_in[(client, month)], math.fsum(h.amount for h in mine)

    def snapshot(self) -> tuple[Any, ...]:
        accounts = {c: (a.month, a.spent, a.reserved) for c, a in self.budgets._accounts.items()}
        return accounts, frozenset(self.budgets.dirty)

    def settleable(self) -> list[Held]:
        month = self.month()
        return [
            h for h in self.held if h.cost is None and (self.settle_past_months or h.month == month)
        ]

    # -- rules

    def _reserve(self, client: str, amount: float) -> None:
        before = {c: self.observed(c) for c in CLIENTS}, frozenset(self.budgets.dirty)
        try:
            reservation = self.budgets.reserve(client, self.limit[client], amount)
        except BudgetExceeded:
            after = {c: self.observed(c) for c in CLIENTS}, frozenset(self.budgets.dirty)
            assert after == before, "a refused reservation changed the budgets"
            spent, reserved = self.expected(client)
            assert spent + reserved + amount > self.limit[client] - EPS, "refused though it fits"
            return
        assert reservation.amount == amount and reservation.month == self.month()
        self.held.append(Held(client, reservation.month, amount, reservation))

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

    def _settle(self, held: Held, cost: float) -> None:
        assert 0.0 <= cost <= held.amount
        held.reservation.settle(cost)
        held.cost = cost
        self.spent_in[(held.client, held.month)] += cost

    @precondition(lambda self: bool(self.settleable()))
    @rule(data=st.data(), fraction=FRACTION)
    def settle(self, data: st.DataObject, fraction: float) -> None:
        held = data.draw(st.sampled_from(self.settleable()), label="held")
        self._settle(held, held.amount * fraction)

    @precondition(lambda self: bool(self.settleable()))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        """A failed, cancelled or abandoned request: settle(0)."""
        self._settle(data.draw(st.sampled_from(self.settleable()), label="held"), 0.0)

    @precondition(lambda self: any(h.cost is not None for h in self.held))
    @rule(data=st.data(), cost=st.floats(0.0, 10.0))
    def settle_again(self, data: st.DataObject, cost: float) -> None:
        held = data.draw(st.sampled_from([h for h in self.held if h.cost is not None]))
        before = self.snapshot()
        held.reservation.settle(cost)
        assert self.snapshot() == before, "a second settle changed the budgets"

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

    def teardown(self) -> None:
        if not self.limit:
            return
        for held in self.settleable():
            self._settle(held, held.amount / 2)
        self.budgets_hold()
        month = self.month()
        for client in CLIENTS:
            if not any(h.cost is None and h.month == month for h in self.held):
                assert close(self.observed(client)[1], 0.0), "reserved is not back to 0"


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
    """Many requests admitted before any finishes, then settled in any order (SPEC §6)."""
    budgets = Budgets(clock=Clock(MID_MONTH))
    taken: list[Reservation] = []
    for amount in amounts:
        try:
            taken.append(budgets.reserve("c", limit, amount))
        except BudgetExceeded:
            assert math.fsum(r.amount for r in taken) + amount > limit - EPS
    assert math.fsum(r.amount for r in taken) <= limit + EPS
    order = data.draw(st.permutations(range(len(taken))), label="order")
    costs = data.draw(st.lists(FRACTION, min_size=len(taken), max_size=len(taken)))
    settled = 0.0
    for i in order:
        taken[i].settle(taken[i].amount * costs[i])
        taken[i].settle(taken[i].amount)  # a second settle is a no-op
        settled += taken[i].amount * costs[i]
        assert budgets.spent("c") <= limit + EPS
    assert close(budgets.spent("c"), settled)
    account = budgets._accounts.get("c")
    assert account is None or close(account.reserved, 0.0)


@SETTINGS
@given(first=st.floats(0.01, 1.0), second=st.floats(0.01, 1.0), fraction=FRACTION)
def test_settling_last_months_reservation_leaves_this_month_alone(
    first: float, second: float, fraction: float
) -> None:
    """A request admitted at 23:59 on the last day of a month and finished after midnight."""
    clock = Clock(_utc(2026, 1, 31, 23, 59))
    budgets = Budgets(clock=clock)
    late = budgets.reserve("c", 1.0, first)
    clock.t = _utc(2026, 2, 1, 0, 0, 5)
    budgets.reserve("c", 1.0, second)
    late.settle(first * fraction)  # January's cost, not February's
    account = budgets._accounts["c"]
    assert account.month == "2026-02" and close(account.reserved, second)
    assert budgets.spent("c") == 0.0


# ----------------------------------------------------------------------------------- rate limiter


@dataclass(eq=False)
class Slot:
    client: str
    at: float
    admitted: Admitted = field(repr=False)
    tokens: int  # what the window holds for it: the estimate, then the settled tokens
    cancelled: bool = False


class RateLimitMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock(MID_MONTH)
        self.limiter = RateLimiter(clock=self.clock)
        self.limits: dict[str, tuple[int, int | None]] = {}
        self.slots: list[Slot] = []

    @initialize(
        rpm=st.tuples(st.integers(1, 5), st.integers(1, 5)),
        tpm=st.tuples(st.none() | st.integers(1, 2000), st.none() | st.integers(1, 2000)),
    )
    def setup(self, rpm: tuple[int, int], tpm: tuple[int | None, int | None]) -> None:
        self.limits = {c: (rpm[i], tpm[i]) for i, c in enumerate(CLIENTS)}

    def live(self, client: str) -> list[Slot]:
        """Admitted, not cancelled and still inside the window."""
        edge = self.clock.t - WINDOW_S
        return [s for s in self.slots if s.client == client and not s.cancelled and s.at > edge]

    def in_token_window(self, client: str) -> list[Slot]:
        """Whose one-second token bucket is still inside the window."""
        edge = self.clock.t - WINDOW_S
        return [s for s in self.slots if s.client == client and float(int(s.at)) + 1 > edge]

    @rule(client=st.sampled_from(CLIENTS), est=st.integers(0, 600))
    def admit(self, client: str, est: int) -> None:
        rpm, tpm = self.limits[client]
        live = self.live(client)
        buckets = self.in_token_window(client)
        used = sum(s.tokens for s in buckets)
        if len(live) >= rpm:
            expect = "requests"
        elif tpm is not None and buckets and used + est > tpm:
            expect = "tokens"
        else:
            expect = None
        try:
            admitted = self.limiter.admit(client, rpm=rpm, tpm=tpm, est_tokens=est)
        except RateLimitExceeded as refused:
            assert expect is not None, (
                f"refused with {len(live)}/{rpm} requests, {used}+{est}/{tpm} tokens"
            )
            assert f"{expect} per minute" in refused.message
            assert int(refused.headers["retry-after"]) >= 1
        else:
            assert expect is None, f"admitted over the {expect} limit"
            tokens = est if tpm is not None else 0
            self.slots.append(Slot(client, self.clock.t, admitted, tokens))
        self.window_matches(client)

    def window_matches(self, client: str) -> None:
        """Right after an admission (which trims the window): the limiter counts what we count."""
        window = self.limiter._windows[client]
        assert len(window.requests) == len(self.live(client)), "a cancelled slot was not freed"
        assert window.token_total >= 0
        assert window.token_total == sum(s.tokens for s in self.in_token_window(client))

    @precondition(lambda self: bool(self.slots))
    @rule(data=st.data(), tokens=st.integers(0, 1200))
    def settle(self, data: st.DataObject, tokens: int) -> None:
        slot = data.draw(st.sampled_from(self.slots), label="slot")
        slot.admitted.settle(tokens)
        if self.limits[slot.client][1] is not None:
            slot.tokens = tokens

    @precondition(lambda self: any(not s.cancelled for s in self.slots))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        slot = data.draw(st.sampled_from([s for s in self.slots if not s.cancelled]))
        slot.admitted.cancel()
        slot.cancelled = True
        slot.tokens = 0

    @rule(seconds=st.floats(0.0, 90.0) | st.sampled_from([0.0, 0.5, 59.999, 60.0, 60.001]))
    def advance(self, seconds: float) -> None:
        self.clock.t += seconds

    @invariant()
    def never_more_than_rpm_in_a_minute(self) -> None:
        for client, (rpm, _) in self.limits.items():
            times = [s.at for s in self.slots if s.client == client and not s.cancelled]
            for t in times:
                in_window = sum(1 for u in times if t - WINDOW_S < u <= t)
                assert in_window <= rpm, f"{in_window} requests in the minute up to {t}, rpm {rpm}"


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


class AccountingMachine(RuleBasedStateMachine):
    """Accounting.admit / finish as the gateway calls them; one client whose id is its name, so
    budgets and windows keyed by either are found under "c1"."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock(MID_MONTH)
        config = accounting_config()
        self.acc = Accounting(config, None, build_providers(config), lambda: [], clock=self.clock)
        self.client = ClientInfo(id="c1", name="c1", source="static")
        self.calls: list[tuple[Call, int]] = []  # (call, max_tokens)
        self.spent = 0.0
        self.n = 0

    @initialize(budget=BUDGET, rpm=st.integers(1, 8))
    def setup(self, budget: float, rpm: int) -> None:
        self.client = ClientInfo(
            id="c1", name="c1", source="static", rpm=rpm, monthly_budget_usd=budget
        )

    @property
    def limit(self) -> float:
        assert self.client.monthly_budget_usd is not None
        return self.client.monthly_budget_usd

    def account(self) -> tuple[float, float]:
        budgets = self.acc.budgets
        key = self.client.id if self.client.id in budgets._accounts else self.client.name
        account = budgets._accounts.get(key)
        reserved = account.reserved if account and account.month == month_of(self.clock()) else 0
        return budgets.spent(key), reserved

    def outstanding(self) -> list[tuple[Call, int]]:
        return [(c, m) for c, m in self.calls if not c.done]

    def live(self) -> int:
        edge = self.clock.t - WINDOW_S
        return sum(1 for c, _ in self.calls if c.reservation is not None and c.ts > edge)

    def window_requests(self) -> int:
        windows = self.acc.limiter._windows
        window = windows.get(self.client.id) or windows.get(self.client.name)
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
        live, (spent, reserved) = self.live(), self.account()
        try:
            self.acc.admit(call, body, [TARGET])
        except RateLimitExceeded:
            assert live >= self.client.rpm, f"rate-limited with {live} of {self.client.rpm}"
        except BudgetExceeded:
            assert live < self.client.rpm
            assert self.account() == (spent, reserved), "a refused reservation changed the budget"
            assert spent + reserved + worst > self.limit - EPS, "refused though it fits"
            self.acc.finish(call, target=TARGET, key_id=None, status=429)  # the gateway's finally
        else:
            assert live < self.client.rpm, f"admitted with {live} of {self.client.rpm}"
            assert call.reservation is not None and call.reservation.amount >= worst - EPS
            self.calls.append((call, out))
        assert self.window_requests() == self.live(), "a budget refusal kept its rate-limit slot"

    @precondition(lambda self: bool(self.outstanding()))
    @rule(data=st.data(), prompt=FRACTION, completion=FRACTION, answered=st.booleans())
    def finish(self, data: st.DataObject, prompt: float, completion: float, answered: bool) -> None:
        call, out = data.draw(st.sampled_from(self.outstanding()), label="call")
        if answered:
            usage = Usage(int(call.prompt_estimate * prompt), int(out * completion))
            self.acc.finish(call, target=TARGET, key_id="k", status=200, usage=usage)
            self.spent += usage.prompt_tokens * PER_TOKEN + usage.completion_tokens * PER_TOKEN
        else:  # an upstream error, a cancel, a client gone: nothing was used
            self.acc.finish(call, target=TARGET, key_id=None, status=499, error_code="closed")
        assert call.done

    @precondition(lambda self: any(c.done for c, _ in self.calls))
    @rule(data=st.data())
    def finish_again(self, data: st.DataObject) -> None:
        call = data.draw(st.sampled_from([c for c, _ in self.calls if c.done]), label="call")
        before = self.account()
        self.acc.finish(call, target=TARGET, key_id="k", status=200, usage=Usage(10**6, 10**6))
        assert self.account() == before, "a second finish settled again"

    @rule(seconds=st.floats(0.0, 90.0))
    def advance(self, seconds: float) -> None:
        self.clock.t += seconds  # 50 steps stay inside the month

    @invariant()
    def budget_holds(self) -> None:
        spent, reserved = self.account()
        holding = math.fsum(c.reservation.amount for c, _ in self.outstanding() if c.reservation)
        assert spent <= self.limit + EPS
        assert spent + reserved <= self.limit + EPS
        assert close(spent, self.spent), f"spent {spent}, settled {self.spent}"
        assert close(reserved, holding), f"reserved {reserved}, outstanding {holding}"

    def teardown(self) -> None:
        for call, _ in self.outstanding():
            self.acc.finish(call, target=None, key_id=None, status=500, error_code="bug")
        self.budget_holds()
        assert close(self.account()[1], 0.0), "reserved is not back to 0"


def test_accounting_settles_every_call_once() -> None:
    run_state_machine_as_test(AccountingMachine, settings=SETTINGS)
