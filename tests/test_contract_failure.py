"""``reportFailure``: a task its sandbox had to kill ends Failed and the requester gets the price back."""

from __future__ import annotations

from test_contract import DIGEST_A, RESULT_CID, Chain


def test_a_seat_holder_reports_failure_and_the_requester_is_refunded():
    chain = Chain()
    task_id, _ = chain.create()
    chain.claim(task_id, chain.w1)
    before = chain.balance(chain.requester)
    worker_before = chain.balance(chain.w1)
    receipt = chain.send(chain.market.functions.reportFailure(task_id, DIGEST_A, RESULT_CID), chain.w1)
    (failed,) = chain.events(receipt, "TaskFailed")
    assert failed["taskId"] == task_id and failed["worker"] == chain.w1
    assert failed["resultCid"] == RESULT_CID and failed["refund"] == chain.task(task_id).price
    assert chain.balance(chain.requester) - before == failed["refund"]  # the requester paid no gas here
    assert chain.balance(chain.w1) == worker_before - chain.gas_cost(receipt)  # the worker earned nothing
    assert chain.task(task_id).status.value == 7
    assert chain.escrow() == 0


def test_an_unclaimed_single_validator_task_takes_a_failure_report_from_any_worker():
    chain = Chain()
    task_id, _ = chain.create()
    before = chain.balance(chain.requester)
    chain.send(chain.market.functions.reportFailure(task_id, DIGEST_A, RESULT_CID), chain.w2)
    assert chain.task(task_id).status.value == 7
    assert chain.balance(chain.requester) - before == chain.task(task_id).price
    assert chain.escrow() == 0


def test_only_a_seat_holder_may_report_failure_and_only_once():
    chain = Chain()
    task_id, _ = chain.create()
    fn = chain.market.functions.reportFailure(task_id, DIGEST_A, RESULT_CID)
    chain.claim(task_id, chain.w1)
    with chain.reverts("NotSeatHolder"):
        chain.send(fn, chain.stranger)
    chain.send(fn, chain.w1)
    with chain.reverts("TaskNotOpen"):
        chain.send(fn, chain.w1)
    with chain.reverts("TaskNotOpen"):
        chain.submit(task_id, chain.w1)
