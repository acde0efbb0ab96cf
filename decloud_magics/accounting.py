"""Spending rules checked before anything is sent: budget, max price, wallet balance.

Pure functions over integers of wei, so the rules are tested without a chain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from .errors import BudgetExceeded, InsufficientFunds, UsageError
from .units import format_amount, parse_amount

#: Gas the requester's own transaction (createTask) may use; a reclaim or cancel adds less.
REQUESTER_GAS_ESTIMATE = 120_000

_BUDGET = re.compile(r"^\s*(?P<amount>[^/\s]+)\s*(?:/\s*(?P<period>h|hr|hour|d|day))?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Budget:
    """A spending limit: in total, or per rolling hour (or day)."""

    limit_wei: int
    period_s: int | None = None  # None: all time

    def window_start(self, now: datetime) -> datetime | None:
        return None if self.period_s is None else now - timedelta(seconds=self.period_s)

    def describe(self, symbol: str = "ETH") -> str:
        amount = format_amount(self.limit_wei, symbol)
        if self.period_s is None:
            return f"{amount} in total"
        return f"{amount} per {'hour' if self.period_s == 3600 else 'day'}"

    def to_setting(self) -> dict[str, int | None]:
        return {"limit_wei": self.limit_wei, "period_s": self.period_s}

    @classmethod
    def from_setting(cls, value: dict[str, int | None] | None) -> Budget | None:
        if not value:
            return None
        return cls(int(value["limit_wei"] or 0), value.get("period_s"))


def parse_budget(text: str) -> Budget | None:
    """``0.05/h`` (per hour), ``1.0`` (in total), ``2gwei/day``; ``off`` removes the budget."""
    if text.strip().lower() in ("off", "none", "0/off"):
        return None
    match = _BUDGET.match(text)
    sentence = f"'{text}' is not a budget: write e.g. 0.05/h (per hour), 1.0 (in total) or off."
    if not match:
        raise UsageError(sentence)
    try:
        limit = parse_amount(match["amount"])
    except UsageError:
        raise UsageError(sentence) from None
    period = match["period"]
    seconds = None if period is None else (3600 if period.lower().startswith("h") else 86400)
    return Budget(limit, seconds)


def check_budget(budget: Budget | None, spent_wei: int, price_wei: int, gas_wei: int, symbol: str = "ETH") -> None:
    """Refuse a run whose price plus gas would take spending past the budget."""
    if budget is None:
        return
    cost = price_wei + gas_wei
    if spent_wei + cost > budget.limit_wei:
        left = max(0, budget.limit_wei - spent_wei)
        raise BudgetExceeded(
            f"This run would cost {format_amount(cost, symbol)} (price {format_amount(price_wei, symbol)} "
            f"+ gas about {format_amount(gas_wei, symbol)}) but the budget is {budget.describe(symbol)} "
            f"and {format_amount(spent_wei, symbol)} is spent, leaving {format_amount(left, symbol)}: "
            "lower --price or raise the budget with %decloud budget."
        )


def check_max_price(price_wei: int, max_price_wei: int | None, symbol: str = "ETH") -> None:
    if max_price_wei is not None and price_wei > max_price_wei:
        raise BudgetExceeded(
            f"The price {format_amount(price_wei, symbol)} is above the maximum of "
            f"{format_amount(max_price_wei, symbol)}: lower --price or raise --max-price."
        )


def check_balance(balance_wei: int, price_wei: int, gas_wei: int, account: str, symbol: str = "ETH") -> None:
    """Refuse before sending when the wallet cannot pay price plus gas."""
    need = price_wei + gas_wei
    if balance_wei < need:
        raise InsufficientFunds(
            f"The wallet {account} holds {format_amount(balance_wei, symbol)} but this run needs about "
            f"{format_amount(need, symbol)} (price + gas), {format_amount(need - balance_wei, symbol)} short: "
            "fund the account or lower --price."
        )
