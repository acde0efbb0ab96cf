"""One operator's worker processes split single-validator tasks by share, without claims.

Workers here are separate ``Worker`` objects that share only the chain, the
store and the live channel, as the devnet's processes do; each test gets a
private embedded chain so who serves a task is deterministic.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_trust import Market

from decloud_magics.chain.market import wait_until
from decloud_magics.client import Client
from decloud_magics.worker.service import Worker
from decloud_magics.worker.sharing import Share

PRICE = 10**15


class Operator(Market):
    """A private chain and store, and the workers a test starts on them."""

    def worker(self, index: int, share: Share) -> Worker:  # type: ignore[override]
        return super().worker(Worker, index, share=share)

    def connect(self) -> Client:
        return self.client()

    def claims(self, task_id: int) -> list[str]:
        market = self.chain.market(0)
        return [
            e.args["worker"] for e in market.events_in(0) if e.name == "TaskClaimed" and e.task_id == task_id
        ]


@pytest.fixture
def operator(tmp_path: Path) -> Iterator[Operator]:
    op = Operator(tmp_path)
    yield op
    op.close()


def test_shares_split_tasks_by_id_without_a_claim(operator: Operator) -> None:
    first = operator.worker(1, Share(1, 2))
    second = operator.worker(2, Share(2, 2))
    client = operator.connect()
    runs = [client.submit(f"y = {i} * 2", outputs=["y"], price=PRICE, timeout=30) for i in range(6)]
    assert [r.result(timeout=60).values for r in runs] == [{"y": 2 * i} for i in range(6)]
    for run in runs:
        owner = first if Share(1, 2).owns(run.task_id) else second
        assert run.worker == owner.market.account
        assert operator.claims(run.task_id) == []  # not one claim transaction
        kinds = [e.kind.value for e in run.events]
        assert kinds == ["created", "order_placed", "running", "completed"]
    # counted once the settlement's transaction returns, which may be just after the client saw it
    assert wait_until(lambda: (first.completed, second.completed) == (3, 3), timeout=30)


def test_a_long_task_is_claimed_by_its_owner_before_others_may_take_it(operator: Operator) -> None:
    share = Share(1, 2, claim_after=0.3, steal_after=1.5)
    owner = operator.worker(1, share)
    other = operator.worker(2, Share(2, 2, claim_after=0.3, steal_after=1.5))
    client = operator.connect()
    run = client.submit(
        "import time\ntime.sleep(2.5)\ndone = True", outputs=["done"], price=PRICE, timeout=30
    )
    holder = owner if share.owns(run.task_id) else other
    assert run.result(timeout=60).values == {"done": True}
    assert operator.claims(run.task_id) == [holder.market.account]  # its own claim, nobody else's
    assert run.worker == holder.market.account
    assert owner.completed + other.completed == 1


def test_a_share_nobody_serves_is_taken_over_with_a_claim(operator: Operator) -> None:
    # Only worker 1 of 2 is running: tasks of share 2 wait steal_after, then worker 1 claims them.
    alone = operator.worker(1, Share(1, 2, claim_after=0.2, steal_after=0.6))
    client = operator.connect()
    runs = [client.submit(f"z = {i}", outputs=["z"], price=PRICE, timeout=30) for i in range(2)]
    assert [r.result(timeout=60).values for r in runs] == [{"z": 0}, {"z": 1}]
    for run in runs:
        assert run.worker == alone.market.account
        stolen = not Share(1, 2).owns(run.task_id)
        assert operator.claims(run.task_id) == ([alone.market.account] if stolen else [])


@pytest.mark.parametrize("text", ["0/2", "3/2", "2", "a/b", "1/0"])
def test_a_wrong_share_is_one_sentence(text: str) -> None:
    with pytest.raises(ValueError, match="INDEX/COUNT"):
        Share.parse(text)


def test_a_share_claims_before_it_may_be_stolen() -> None:
    with pytest.raises(ValueError, match="claim its own long task before"):
        Share(1, 2, claim_after=3.0, steal_after=3.0)


def test_chain_hints_are_left_out_when_the_node_pushes_blocks(operator: Operator) -> None:
    """A node that pushes new blocks tells everyone; hints on the live channel would only add load."""
    from decloud_magics.chain.heads import HeadWatcher

    heard: list[tuple[int, str]] = []
    operator.channel.subscribe(lambda task_id, kind, data: heard.append((task_id, kind)))
    operator.worker(1, Share(1, 1))
    client = operator.connect()
    first = client.submit("y = 1", outputs=["y"], price=PRICE, timeout=30)
    assert first.result(timeout=60).values == {"y": 1}
    assert wait_until(lambda: (first.task_id, "settled") in heard, timeout=30)
    assert (first.task_id, "created") in heard

    pushed = HeadWatcher("http://127.0.0.1:9", lambda: None)  # as if its node pushed new blocks
    pushed.subscribed.set()
    client.conn.heads = pushed
    operator.workers[0].blocks_pushed = client.conn.blocks_pushed
    second = client.submit("y = 2", outputs=["y"], price=PRICE, timeout=30)
    assert second.result(timeout=60).values == {"y": 2}
    assert wait_until(lambda: operator.workers[0].completed == 2, timeout=30)
    said = [kind for task_id, kind in heard if task_id == second.task_id]
    assert "running" in said and "created" not in said and "settled" not in said
