"""Results are untrusted: tampered bytes are refused, pickles never run, validators must agree.

Each test gets a private embedded chain with workers chosen by the test
(honest ones and liars), so who serves a task is deterministic.
"""

from __future__ import annotations

import pickle
import threading
from pathlib import Path
from typing import Any

import pytest

from decloud_magics.chain.embedded import EmbeddedChain
from decloud_magics.channel import LocalChannel
from decloud_magics.client import Client
from decloud_magics.codecs import Encoded
from decloud_magics.connection import Connection
from decloud_magics.errors import RunFailed
from decloud_magics.ledger import Ledger
from decloud_magics.models import EventKind, Status
from decloud_magics.networks import LOCAL
from decloud_magics.package import ResultPackage, decode_result, encode_result, result_digest
from decloud_magics.store.local import LocalStore
from decloud_magics.worker.service import TaskOffer, Worker


class Market:
    """A private market: one chain, one store, the workers a test asks for."""

    def __init__(self, tmp: Path) -> None:
        self.chain = EmbeddedChain()
        self.store = LocalStore(tmp / "blocks")
        self.channel = LocalChannel()
        self.ledger = Ledger(tmp / "ledger.sqlite")
        self.workers: list[Worker] = []
        self.clients: list[Client] = []

    def worker(self, cls: type[Worker], index: int, **options: Any) -> Worker:
        wake = threading.Event()
        self.chain.add_listener(wake)
        worker = cls(self.chain.market(index), self.store, channel=self.channel, name=f"w{index}", wake=wake,
                     **options)  # fmt: skip
        worker.start()
        self.workers.append(worker)
        return worker

    def client(self) -> Client:
        wake = threading.Event()
        self.chain.add_listener(wake)
        conn = Connection(config=LOCAL, market=self.chain.market(0), store=self.store, channel=self.channel,
                          wake=wake, embedded=self.chain)  # fmt: skip
        client = Client("local", ledger=self.ledger, connection=conn)
        self.clients.append(client)
        return client

    def close(self) -> None:
        for worker in self.workers:
            worker.stop(timeout=5)
        for client in self.clients:
            client.close()


@pytest.fixture
def market(tmp_path):  # type: ignore[no-untyped-def]
    m = Market(tmp_path)
    yield m
    m.close()


class TamperingWorker(Worker):
    """Stores different bytes than the ones its submitted digest describes."""

    def on_complete(self, offer: TaskOffer, result: bytes) -> None:
        honest_digest = result_digest(result)
        forged = decode_result(result)
        forged.stdout = "all is well\n"
        cid = self.store.put(encode_result(forged))
        self.market.submit_result(offer.task_id, honest_digest, cid)


class ConsistentLiar(Worker):
    """Returns a different answer, with a digest that matches its own bytes."""

    def on_complete(self, offer: TaskOffer, result: bytes) -> None:
        forged = decode_result(result)
        forged.stdout = "the answer is 41\n"
        data = encode_result(forged)
        self.market.submit_result(offer.task_id, result_digest(data), self.store.put(data))


class PickleBomber(Worker):
    """Returns a value as a pickle whose loading would run code on the notebook's machine."""

    marker: Path

    def on_complete(self, offer: TaskOffer, result: bytes) -> None:
        bomb = pickle.dumps(_Bomb(str(self.marker)))
        forged = ResultPackage(stdout="done\n", values={"model": Encoded("pickle", bomb, "sklearn.Model")})
        data = encode_result(forged)
        self.market.submit_result(offer.task_id, result_digest(data), self.store.put(data))


class _Bomb:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path(self.path).write_text, ("pwned",))


def test_a_tampered_result_is_refused_and_the_run_failed(market):
    market.worker(TamperingWorker, 4)
    client = market.client()
    run = client.submit("print('the real answer is 42')", timeout=30)
    run.wait(60)
    assert run.status == Status.FAILED
    assert run.events[-1].data["reason"] == "verification"
    with pytest.raises(RunFailed, match="altered"):
        run.result()
    row = client.history()
    assert "altered" in row[row["run_id"] == run.id]["error"].iloc[0]


def test_a_pickle_from_a_worker_is_never_loaded_by_default(market, tmp_path):
    PickleBomber.marker = tmp_path / "side-effect"
    market.worker(PickleBomber, 4)
    client = market.client()
    result = client.submit("model = 1", timeout=30).result(timeout=60)
    assert "model" not in result.values
    assert "--trust-pickle" in result.value_errors["model"]
    assert not PickleBomber.marker.exists()


def test_validators_that_agree_are_each_paid(market):
    for index in (4, 5):
        market.worker(Worker, index)
    client = market.client()
    balances = {i: client.conn.market.balance(market.chain.accounts[i]) for i in (4, 5)}
    run = client.submit("print('the answer is', 6 * 7)", timeout=30, validators=2, price="0.002ether")
    result = run.result(timeout=90)
    assert result.stdout == "the answer is 42\n"
    for i in (4, 5):
        assert client.conn.market.balance(market.chain.accounts[i]) > balances[i]  # paid more than its gas


def test_a_run_whose_workers_said_nothing_live_still_shows_it_ran(market):
    """Over IPFS a short task is never announced; its results on chain say it ran, in order."""
    market.channel.announce_after = 60.0  # the workers stay silent on the live channel
    for index in (4, 5):
        market.worker(Worker, index)
    client = market.client()
    for validators in (1, 2):
        run = client.submit("y = 7", outputs=["y"], timeout=30, validators=validators, price="0.002ether")
        assert run.result(timeout=90).values == {"y": 7}
        kinds = [e.kind.value for e in run.events]
        assert kinds[0] == "created" and kinds[-1] == "completed" and kinds.count("running") == 1, kinds
        assert kinds.index("order_placed") < kinds.index("running") < kinds.index("completed"), kinds


def test_validators_that_disagree_dispute_and_refund(market):
    market.worker(Worker, 4)
    market.worker(ConsistentLiar, 5)
    client = market.client()
    before = client.conn.market.balance()
    run = client.submit("print('the answer is', 6 * 7)", timeout=30, validators=2, price="0.002ether")
    run.wait(90)
    assert run.status == Status.DISPUTED
    final = run.events[-1]
    assert final.kind == EventKind.DISPUTED
    workers = {w.lower() for w in final.data["workers"]}
    assert workers == {market.chain.accounts[4].lower(), market.chain.accounts[5].lower()}
    assert len(set(final.data["digests"])) == 2
    assert before - client.conn.market.balance() == run.gas_cost_wei  # the price came back
    with pytest.raises(RunFailed, match="disagreed"):
        run.result()


class NameSquatter(Worker):
    """Returns, besides the real value, a value named like a builtin the notebook relies on."""

    def on_complete(self, offer: TaskOffer, result: bytes) -> None:
        from decloud_magics.codecs import encode_value

        forged = decode_result(result)
        forged.values["print"] = encode_value("print", "gotcha", allow_pickle=False, role="output")
        data = encode_result(forged)
        self.market.submit_result(offer.task_id, result_digest(data), self.store.put(data))


def test_only_the_names_the_cell_assigns_come_back(market):
    market.worker(NameSquatter, 4)
    client = market.client()
    result = client.submit("answer = 42", timeout=30).result(timeout=60)
    assert result.values == {"answer": 42}
