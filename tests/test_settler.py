"""Settlements leave one worker in order, and those that queue up behind a transaction go together."""

from __future__ import annotations

import threading

from decloud_magics.chain.embedded import EmbeddedChain
from decloud_magics.chain.market import ChainStatus, wait_until
from decloud_magics.worker.settler import Settlement, Settler

CID = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
PRICE = 10**15


def test_results_that_queue_behind_a_transaction_are_sent_in_one_batch() -> None:
    chain = EmbeddedChain()
    requester, worker, rival = chain.market(0), chain.market(1), chain.market(2)
    ids, _ = requester.create_tasks(
        [CID] * 6, PRICE, timeout=30, lease=45, deadline=requester.chain_time() + 600
    )
    rival.submit_result(ids[4], b"\x09" * 32, CID)  # someone else was first for one of them

    outcomes: list[tuple[int, bool, str | None]] = []
    sent: list[list[int]] = []
    single, batch = worker.submit_result, worker.submit_results

    def count_single(task_id, *args, **kw):  # type: ignore[no-untyped-def]
        sent.append([task_id])
        return single(task_id, *args, **kw)

    def count_batch(results):  # type: ignore[no-untyped-def]
        sent.append([r[0] for r in results])
        return batch(results)

    worker.submit_result, worker.submit_results = count_single, count_batch  # type: ignore[method-assign]
    settler = Settler(worker, lambda s, ok, why: outcomes.append((s.task_id, ok, why)))
    before = worker.balance()
    with chain.lock:  # the first transaction waits for the chain: the rest queue up behind it
        settler.put(Settlement(ids[0], b"\x01" * 32, CID))
        assert wait_until(lambda: len(sent) == 1, timeout=30)
        for task_id in ids[1:]:
            settler.put(Settlement(task_id, b"\x01" * 32, CID))
    assert settler.flush(timeout=60)
    settler.close()

    assert sent == [ids[:1], ids[1:]]  # one alone, then everything that waited, in one transaction
    assert [(t, ok) for t, ok, _ in outcomes] == [(t, t != ids[4]) for t in ids]
    assert "another worker settled the task first" in {t: w for t, _, w in outcomes}[ids[4]]
    assert [requester.get_task(t).status for t in ids] == [ChainStatus.COMPLETED] * 6
    assert worker.balance() > before  # five prices in, two transactions' gas out


def test_a_failure_report_goes_alone_and_in_order() -> None:
    chain = EmbeddedChain()
    requester, worker = chain.market(0), chain.market(1)
    ids, _ = requester.create_tasks(
        [CID] * 3, PRICE, timeout=30, lease=45, deadline=requester.chain_time() + 600
    )
    done = threading.Event()
    outcomes: list[int] = []

    def record(settlement: Settlement, ok: bool, why: str | None) -> None:
        assert ok, why
        outcomes.append(settlement.task_id)
        if len(outcomes) == 3:
            done.set()

    settler = Settler(worker, record)
    with chain.lock:  # all three queue up: the report must split them, and keep their order
        settler.put(Settlement(ids[0], b"\x01" * 32, CID))
        settler.put(Settlement(ids[1], b"\x02" * 32, CID, failure="killed after its timeout"))
        settler.put(Settlement(ids[2], b"\x03" * 32, CID))
    assert done.wait(60)
    settler.close()
    assert outcomes == ids
    statuses = [requester.get_task(t).status for t in ids]
    assert statuses == [ChainStatus.COMPLETED, ChainStatus.FAILED, ChainStatus.COMPLETED]
