"""Monthly budgets that hold under concurrency: the worst-case cost of a request is reserved before
it is sent and settled with the real cost afterwards (released on failure). Check and reserve
happen with no await in between, so in one process they are atomic."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from relaygate.errors import BudgetExceeded


def month_of(now: float) -> str:
    return time.strftime("%Y-%m", time.gmtime(now))


@dataclass(slots=True)
class _Account:
    month: str
    spent: float = 0.0
    reserved: float = 0.0


class Reservation:
    __slots__ = ("_budgets", "amount", "client_id", "month", "settled")

    def __init__(self, budgets: Budgets, client_id: str, month: str, amount: float) -> None:
        self._budgets = budgets
        self.client_id = client_id
        self.month = month
        self.amount = amount
        self.settled = False

    def settle(self, actual_cost: float) -> None:
        """Replace the reservation by the real cost (0 to release it)."""
        if not self.settled:
            self.settled = True
            self._budgets.settle(self, actual_cost)


class Budgets:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._accounts: dict[str, _Account] = {}
        self.dirty: set[str] = set()

    def _account(self, client_id: str, month: str) -> _Account:
        account = self._accounts.get(client_id)
        if account is None or account.month != month:
            account = _Account(month)
            self._accounts[client_id] = account
        return account

    def load(self, client_id: str, month: str, spent: float) -> None:
        self._account(client_id, month).spent = spent

    def reserve(self, client_id: str, budget: float, amount: float) -> Reservation:
        month = month_of(self.clock())
        account = self._account(client_id, month)
        if account.spent + account.reserved + amount > budget + 1e-12:
            left = max(0.0, budget - account.spent - account.reserved)
            raise BudgetExceeded(
                f"Monthly budget of ${budget:.2f} reached for this key (${left:.6f} left, this "
                f"request may cost up to ${amount:.6f})."
            )
        account.reserved += amount
        return Reservation(self, client_id, month, amount)

    def settle(self, reservation: Reservation, actual: float) -> None:
        account = self._accounts.get(reservation.client_id)
        if account is None or account.month != reservation.month:
            return  # made last month: that account is gone (its cost is in the ledger's row)
        account.reserved = max(0.0, account.reserved - reservation.amount)
        account.spent += actual
        self.dirty.add(reservation.client_id)

    def spent(self, client_id: str) -> float:
        account = self._accounts.get(client_id)
        return account.spent if account and account.month == month_of(self.clock()) else 0.0

    def take_dirty(self) -> list[tuple[str, str, float]]:
        rows = [(cid, self._accounts[cid].month, self._accounts[cid].spent) for cid in self.dirty]
        self.dirty.clear()
        return rows
