"""The Python API on the embedded network: submit, follow, result, cancel, not processed."""

from __future__ import annotations

import threading

import pytest

from decloud_magics.errors import RunFailed
from decloud_magics.models import EventKind, Status


def _kinds(run):  # type: ignore[no-untyped-def]
    return [e.kind for e in run.events if e.kind != EventKind.STDOUT]


def test_submit_returns_values_and_events_in_order(client):
    run = client.submit("total = sum(xs)\nprint('n =', len(xs))", inputs={"xs": [1, 2, 3]}, timeout=30)
    result = run.result(timeout=60)
    assert result.values == {"total": 6}
    assert result.stdout == "n = 3\n"
    assert run.status == Status.COMPLETED
    assert _kinds(run) == [EventKind.CREATED, EventKind.ORDER_PLACED, EventKind.RUNNING, EventKind.COMPLETED]
    created, placed = run.events[0], run.events[1]
    assert created.tx_hash and created.block is not None and created.gas_used > 0
    assert placed.worker and placed.worker != client.account
    assert run.events[-1].data["result_cid"] == result.result_cid
    assert all(e.at.tzinfo is not None for e in run.events)


def test_callbacks_fire_for_each_stage_and_late_subscribers_get_a_replay(client):
    seen: list[str] = []
    run = client.submit("y = 2", timeout=30)
    run.on("*", lambda e: seen.append(e.kind.value))
    run.wait(60)
    late: list[str] = []
    run.on("completed", lambda e: late.append(e.message))
    assert [k for k in seen if k != "stdout"][-1] == "completed"
    assert len(late) == 1 and "paid" in late[0]
    with pytest.raises(ValueError, match="not an event kind"):
        run.on("finished", print)


def test_watch_yields_until_the_final_event(client):
    run = client.submit("z = 3", timeout=30)
    kinds = [e.kind for e in run.watch(timeout=60)]
    assert kinds[0] == EventKind.CREATED and kinds[-1] == EventKind.COMPLETED


def test_ledger_records_the_run(client):
    run = client.submit("w = 4", timeout=30, name="ledger-check")
    run.result(timeout=60)
    frame = client.history()
    row = frame[frame["run_id"] == run.id].iloc[0]
    assert row["status"] == "completed"
    assert row["input_cid"] == run.input_cid and row["result_cid"] == run.result_cid
    assert row["gas_used"] == run.gas_used > 0


def test_cancel_refunds_the_escrow_on_chain(client):
    # No worker accepts a price this high a timeout this long: the task stays open.
    market = client.conn.market
    pool_workers = _pool_workers()
    for w in pool_workers:
        w.policy.max_timeout = 100
    try:
        before = market.balance()
        run = client.submit("never = 1", timeout=500, price="0.5ether")
        refund = run.cancel()
        run.wait(30)
    finally:
        for w in pool_workers:
            w.policy.max_timeout = 3600
    assert run.status == Status.CANCELLED
    assert refund == run.price_wei
    assert before - market.balance() == run.gas_cost_wei
    assert _kinds(run) == [EventKind.CREATED, EventKind.CANCELLED]
    with pytest.raises(RunFailed, match="cancelled"):
        run.result()


def test_a_task_nobody_takes_is_not_processed_and_refunded(client):
    pool_workers = _pool_workers()
    for w in pool_workers:
        w.policy.max_timeout = 100
    try:
        before = client.conn.market.balance()
        run = client.submit("never = 2", timeout=101, price="0.2ether", queue_window_s=1)
        # The deadline is 102 s away on the chain's clock: move the clock past it.
        client.conn.embedded.time_travel(200)
        run.wait(30)
    finally:
        for w in pool_workers:
            w.policy.max_timeout = 3600
    assert run.status == Status.NOT_PROCESSED
    assert "higher --price" in run.events[-1].message
    assert before - client.conn.market.balance() == run.gas_cost_wei


def test_concurrent_submissions_all_land_once(client):
    runs = []
    lock = threading.Lock()

    def submit(i: int) -> None:
        run = client.submit(f"v = {i} * 2", timeout=30)
        with lock:
            runs.append((i, run))

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, run in runs:
        assert run.result(timeout=120).values == {"v": i * 2}
        assert [e.kind for e in run.events].count(EventKind.COMPLETED) == 1


def _pool_workers():  # type: ignore[no-untyped-def]
    from decloud_magics.connection import local_network

    return local_network().pool.workers


def test_live_lines_from_anyone_but_the_tasks_worker_are_ignored(client):
    run = client.submit("import time\ntime.sleep(1.5)\nlate = 1", timeout=30)
    for _ in range(200):
        if run.worker:
            break
        run._done.wait(0.05)
    client._on_live_message(run.task_id, "stdout", {"worker": "0x" + "ee" * 20, "line": "spoofed"})
    client._on_live_message(run.task_id, "stdout", {"worker": run.worker, "line": "genuine", "elapsed_s": -1})
    run.wait(60)
    lines = [e.message for e in run.events if e.kind == EventKind.STDOUT]
    assert "spoofed" not in lines and "genuine" in lines
    genuine = next(e for e in run.events if e.message == "genuine")
    assert genuine.data["elapsed_s"] >= 0
