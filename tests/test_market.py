"""The Python market client on the in-process EVM: typed results and refusals as sentences."""

from __future__ import annotations

import pytest

from decloud_magics.chain.embedded import EmbeddedChain
from decloud_magics.chain.market import ChainStatus
from decloud_magics.errors import ChainError, InsufficientFunds

CID = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"


@pytest.fixture(scope="module")
def chain() -> EmbeddedChain:
    return EmbeddedChain()


def test_create_claim_submit_reads_back(chain):
    requester, worker = chain.market(0), chain.market(1)
    deadline = requester.chain_time() + 600
    task_id, created = requester.create_task(CID, 10**15, timeout=30, lease=45, deadline=deadline)
    assert created.first("TaskCreated").args["inputCid"] == CID.encode()
    assert requester.get_task(task_id).status == ChainStatus.OPEN
    claimed = worker.claim(task_id)
    assert claimed.first("TaskClaimed").args["worker"] == worker.account
    done = worker.submit_result(task_id, b"\x01" * 32, CID)
    assert done.first("TaskCompleted").args["paidPerWorker"] == 10**15
    assert requester.get_task(task_id).status == ChainStatus.COMPLETED
    assert created.gas_used > 0 and created.gas_cost_wei == created.gas_used * requester.gas_price()


def test_a_revert_sent_without_an_estimate_is_still_explained(chain):
    requester, worker, stranger = chain.market(0), chain.market(1), chain.market(2)
    task_id, _ = requester.create_task(CID, 10**15, timeout=30, lease=45, deadline=requester.chain_time() + 600)
    worker.claim(task_id)
    with pytest.raises(ChainError, match="does not hold a seat"):
        stranger.submit_result(task_id, b"\x02" * 32, CID)  # sent with a fixed gas limit: the receipt reverts
    with pytest.raises(ChainError, match="only the account that created the task"):
        stranger.cancel(task_id)  # estimated: refused before sending
    with pytest.raises(ChainError, match="deadline"):
        requester.create_task(CID, 10**15, timeout=30, lease=45, deadline=1)


def test_batch_submission_skips_what_another_worker_settled_and_pays_once(chain):
    requester, first, second = chain.market(0), chain.market(1), chain.market(2)
    deadline = requester.chain_time() + 600
    ids, _ = requester.create_tasks([CID] * 3, 10**15, timeout=30, lease=45, deadline=deadline)
    first.submit_result(ids[1], b"\x01" * 32, CID)  # unclaimed single-validator task: no claim needed
    before = second.balance()
    accepted, outcome = second.submit_results([(i, b"\x02" * 32, CID) for i in ids])
    assert accepted == {ids[0], ids[2]}
    assert second.balance() - before == 2 * 10**15 - outcome.gas_cost_wei
    assert [requester.get_task(i).status for i in ids] == [ChainStatus.COMPLETED] * 3
    with pytest.raises(ChainError, match="at least one task"):
        second.submit_results([])
    assert outcome.gas_used < 3 * 42_000  # one base fee and one payout for the whole batch


def test_follow_returns_only_new_events(chain):
    requester = chain.market(0)
    follower = requester.follow(requester.block_number())
    follower.poll()
    task_id, _ = requester.create_task(CID, 10**15, timeout=30, lease=45, deadline=requester.chain_time() + 600)
    names = [(e.name, e.task_id) for e in follower.poll()]
    assert names == [("TaskCreated", task_id)]
    assert follower.poll() == []
    follower.close()


def test_no_funds_is_a_sentence(chain):
    poor = chain.market(0)
    with pytest.raises(InsufficientFunds, match="cannot pay"):
        poor.create_task(CID, 10**30, timeout=30, lease=45, deadline=poor.chain_time() + 600)


def test_every_error_the_contract_can_raise_has_a_sentence():
    from decloud_magics.chain.artifact import load_artifact
    from decloud_magics.chain.market import ERROR_SENTENCES

    errors = {item["name"] for item in load_artifact()["abi"] if item.get("type") == "error"}
    assert errors - set(ERROR_SENTENCES) == set()
    assert all(s[0].islower() and not s.endswith(".") for s in ERROR_SENTENCES.values())  # they end a sentence


def test_logs_decode_as_web3_decodes_them(chain):
    """The market's own log decoder against web3's process_log, on every kind of log the contract writes."""
    requester, first, second = chain.market(0), chain.market(1), chain.market(2)
    start = chain.w3.eth.block_number + 1
    deadline = requester.chain_time() + 600
    done, _ = requester.create_task(CID, 10**15, timeout=30, lease=45, deadline=deadline)
    first.claim(done)
    first.submit_result(done, b"\x01" * 32, CID)
    cancelled, _ = requester.create_task(CID, 10**15, timeout=30, lease=45, deadline=deadline)
    requester.cancel(cancelled)
    released, _ = requester.create_task(CID, 10**15, timeout=30, lease=45, deadline=deadline)
    first.claim(released)
    first.release(released)
    first.report_failure(released, b"\x03" * 32, CID)
    disputed, _ = requester.create_task(CID, 2 * 10**15, timeout=30, lease=45, deadline=deadline, validators=2)
    for market, digest in ((first, b"\x04" * 32), (second, b"\x05" * 32)):
        market.claim(disputed)
        market.submit_result(disputed, digest, CID, validators=2)
    logs = chain.w3.eth.get_logs({"address": requester.address, "fromBlock": start})
    decoded = requester.decode_logs(list(logs))
    names = {event.name for event in decoded}
    assert {"TaskCreated", "TaskClaimed", "ResultSubmitted", "TaskCompleted", "TaskCancelled", "TaskReleased",
            "TaskFailed", "TaskDisputed"} <= names  # fmt: skip
    for log, event in zip(logs, decoded, strict=True):
        expected = dict(requester.contract.events[event.name]().process_log(log)["args"])
        args = dict(event.args)
        if event.name == "TaskCreated":  # the packed terms come unpacked
            assert args["deadline"] == deadline and args["validators"] in (1, 2)
            expected.pop("terms")
            args = {k: v for k, v in args.items() if k in expected}
        assert args == expected
        assert [type(v) for v in args.values()] == [type(v) for v in expected.values()]
