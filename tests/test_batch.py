"""``Client.map``: many runs of one cell, opened in batches, each with its own result."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest

from decloud_magics.accounting import REQUESTER_GAS_ESTIMATE
from decloud_magics.errors import BudgetExceeded, UsageError
from decloud_magics.models import EventKind, Status
from decloud_magics.units import parse_amount

PRICE = "0.0001"


def test_each_input_is_a_run_of_its_own_and_a_batch_shares_one_transaction(client) -> None:  # type: ignore[no-untyped-def]
    runs = client.map("y = x * 2\nprint('x is', x)", [{"x": i} for i in range(5)], outputs=["y"], price=PRICE)
    results = [run.result(timeout=120) for run in runs]
    assert [r.values for r in results] == [{"y": 2 * i} for i in range(5)]
    assert [r.stdout for r in results] == [f"x is {i}\n" for i in range(5)]
    assert len({run.task_id for run in runs}) == 5 and len({run.id for run in runs}) == 5
    created = [next(e for e in run.events if e.kind == EventKind.CREATED) for run in runs]
    assert len({e.tx_hash for e in created}) == 1  # one createTasks for the five
    receipt = client.conn.market.w3.eth.get_transaction_receipt(created[0].tx_hash)
    assert sum(e.data["gas"] for e in created) == receipt["gasUsed"]  # the batch's gas, shared exactly
    history = client.history()
    assert set(history.loc[history["run_id"].isin([r.id for r in runs]), "status"]) == {"completed"}


def test_batches_of_a_given_size(client) -> None:  # type: ignore[no-untyped-def]
    runs = client.map("z = k", [{"k": k} for k in range(5)], outputs=["z"], price=PRICE, batch=2)
    assert [run.result(timeout=120).values for run in runs] == [{"z": k} for k in range(5)]
    hashes = [next(e for e in run.events if e.kind == EventKind.CREATED).tx_hash for run in runs]
    assert len(set(hashes)) == 3 and hashes[0] == hashes[1] and hashes[2] == hashes[3] != hashes[4]


def test_an_input_that_cannot_be_sent_fails_alone_before_anything_is_paid(client) -> None:  # type: ignore[no-untyped-def]
    before = client.conn.market.contract.functions.taskCount().call()
    runs = client.map("w = v", [{"v": 1}, {"v": threading.Lock()}, {"v": 3}], outputs=["w"], price=PRICE)
    assert runs[1].status == Status.FAILED and runs[1].task_id is None
    with pytest.raises(Exception, match="'v'"):
        runs[1].result(timeout=5)
    assert [runs[0].result(timeout=120).values, runs[2].result(timeout=120).values] == [{"w": 1}, {"w": 3}]
    assert client.conn.market.contract.functions.taskCount().call() == before + 2


def test_wrong_inputs_and_a_budget_are_refused_before_anything_is_sent(client) -> None:  # type: ignore[no-untyped-def]
    before = client.conn.market.contract.functions.taskCount().call()
    with pytest.raises(UsageError, match="list of dicts"):
        client.map("y = 1", {"x": 1})
    with pytest.raises(UsageError, match="list of dicts"):
        client.map("y = 1", [1, 2])
    with pytest.raises(UsageError, match="at least 1"):
        client.map("y = 1", [{}], batch=0)
    # A budget with room for three more runs: two fit together, fifty do not.
    one_run = parse_amount(PRICE) + REQUESTER_GAS_ESTIMATE * client.conn.market.gas_price()
    room = client.spent_wei() + 3 * one_run
    client.set_budget(f"{Decimal(room).scaleb(-18):f}")
    try:
        with pytest.raises(BudgetExceeded):
            client.map("y = 1", [{} for _ in range(50)], price=PRICE)
        assert client.conn.market.contract.functions.taskCount().call() == before
        runs = client.map("y = 1", [{}, {}], price=PRICE)
        assert [r.result(timeout=120).values for r in runs] == [{"y": 1}, {"y": 1}]
    finally:
        client.set_budget("off")
