"""Cost control and the ledger's views, the way a user meets them in a notebook."""

from __future__ import annotations

from decimal import Decimal

import pandas as pd
import pytest
from IPython.core.error import UsageError as IPythonUsageError

from decloud_magics.accounting import Budget, check_balance, check_budget, parse_budget
from decloud_magics.errors import BudgetExceeded, InsufficientFunds, UsageError


@pytest.mark.parametrize(
    "text, limit, period",
    [("0.05/h", 5 * 10**16, 3600), ("1.0", 10**18, None), ("2gwei/day", 2 * 10**9, 86400), ("off", None, None)],
)
def test_parse_budget(text, limit, period):
    budget = parse_budget(text)
    if limit is None:
        assert budget is None
    else:
        assert budget == Budget(limit, period)


def test_bad_budget_is_one_sentence():
    with pytest.raises(UsageError, match="is not a budget"):
        parse_budget("lots/week")


def test_budget_counts_gas_and_names_the_figures():
    check_budget(Budget(100), spent_wei=50, price_wei=40, gas_wei=10)  # exactly at the limit: allowed
    with pytest.raises(BudgetExceeded) as info:
        check_budget(Budget(100), spent_wei=50, price_wei=40, gas_wei=11)
    text = str(info.value)
    assert "budget is" in text and "spent" in text and "price" in text and "gas" in text


def test_balance_shortfall_is_named():
    with pytest.raises(InsufficientFunds, match="short"):
        check_balance(10**15, 10**15, 1, "0xabc")


@pytest.fixture
def fresh_budget(shell):  # type: ignore[no-untyped-def]
    yield
    shell.run_line_magic("decloud", "budget off")


def test_total_budget_refuses_a_run_before_anything_is_sent(shell, run_cell, client, fresh_budget):
    magics_client = _magics(shell).client()
    spent = magics_client.spent_wei()
    # room for the price but not for price + gas: gas must be counted
    limit = Decimal(spent + 10**15) / Decimal(10**18)
    shell.run_line_magic("decloud", f"budget {limit}")
    tasks_before = magics_client.conn.market.contract.functions.taskCount().call()
    result, _ = run_cell("%%decloud run --price 0.001 --name over-budget\nx = 1")
    error = result.error_in_exec
    assert type(error).__name__ == "BudgetExceeded"
    assert "budget is" in str(error) and "gas" in str(error)
    assert magics_client.conn.market.contract.functions.taskCount().call() == tasks_before
    history = magics_client.history(status="failed")
    assert "over-budget" in set(history["name"])


def test_hourly_budget_shows_what_is_left(shell, run_cell, fresh_budget, capsys):
    result, out = run_cell("%decloud budget 1000/h")
    result.raise_error()
    assert "per hour" in out.stdout and "left" in out.stdout
    result, _ = run_cell("%%decloud run --price 0.0001\nhb = 1")
    result.raise_error()
    result, out = run_cell("%decloud budget 0.00001/h")
    result, _ = run_cell("%%decloud run --price 0.0001\nhb2 = 1")
    assert type(result.error_in_exec).__name__ == "BudgetExceeded"
    assert "per hour" in str(result.error_in_exec)


def test_max_price_refuses(run_cell):
    result, _ = run_cell("%%decloud run --price 0.01 --max-price 0.001\nmp = 1")
    assert type(result.error_in_exec).__name__ == "BudgetExceeded"
    assert "above the maximum" in str(result.error_in_exec)


def test_history_events_and_summary_frames(shell, run_cell):
    result, _ = run_cell("%%decloud run --name framed\nframed_value = 5")
    result.raise_error()
    history = shell.run_line_magic("decloud", "history --limit 5")
    assert isinstance(history, pd.DataFrame)
    for column in ("run_id", "status", "submitted_at", "price", "gas_used", "gas_cost", "total_cost", "worker",
                   "input_cid", "result_cid", "cell_hash"):  # fmt: skip
        assert column in history.columns
    assert str(history["submitted_at"].dt.tz) == "UTC"
    assert isinstance(history["total_cost"].iloc[0], Decimal)
    assert history["submitted_at"].is_monotonic_decreasing
    run_id = history[history["name"] == "framed"]["run_id"].iloc[0]
    events = shell.run_line_magic("decloud", f"events {run_id[:6]}")
    assert list(events["kind"])[:2] == ["created", "order_placed"] and events["kind"].iloc[-1] == "completed"
    summary = shell.run_line_magic("decloud", "summary")
    assert len(summary) == 1 and summary["completed"].iloc[0] >= 1


def test_result_is_fetched_and_verified_again(shell, run_cell):
    result, _ = run_cell("%%decloud run --name again\nagain_value = [1, 2, 3]\nprint('hello again')")
    result.raise_error()
    shell.user_ns.pop("again_value")
    run_id = shell.run_line_magic("decloud", "history --limit 1")["run_id"].iloc[0]
    result, out = run_cell(f"%decloud result {run_id}")
    result.raise_error()
    assert shell.user_ns["again_value"] == [1, 2, 3]
    assert "hello again" in out.stdout


def test_wallet_shows_balance_not_the_key(run_cell):
    result, out = run_cell("%decloud wallet")
    result.raise_error()
    assert "address" in out.stdout and "balance" in out.stdout and "escrow" in out.stdout
    # eth-tester's first account has the well-known key 0x…01: it must not be printed
    assert "0" * 63 + "1" not in out.stdout


def test_unknown_history_option_is_a_usage_error(run_cell):
    result, _ = run_cell("%decloud history --colour blue")
    assert isinstance(result.error_in_exec, IPythonUsageError)


def _magics(shell):  # type: ignore[no-untyped-def]
    return next(m for m in shell.configurables if type(m).__name__ == "DecloudMagics")
