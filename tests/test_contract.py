"""TaskMarket.sol on the in-process EVM: every lifecycle path, its events and its payments.

Each test gets a fresh chain with the committed artifact deployed, so what is
tested is exactly what the package ships. Timing-sensitive steps pin the block
timestamp with eth-tester's time travel instead of relying on the wall clock.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from web3 import EthereumTesterProvider, Web3
from web3.logs import DISCARD

from decloud_magics.chain.market import unpack_terms
from decloud_magics.chain.records import ChainStatus

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = ROOT / "decloud_magics" / "chain" / "contracts"
SOURCE = CONTRACTS / "TaskMarket.sol"
ARTIFACT = CONTRACTS / "TaskMarket.json"
HELPERS = ROOT / "tests" / "contracts" / "Helpers.json"
BUILD_SCRIPT = ROOT / "scripts" / "build_contract.js"

CID = b"bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"
RESULT_CID = b"bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
DIGEST_A = b"\xaa" * 32
DIGEST_B = b"\xbb" * 32
PRICE = 10**16


St = ChainStatus  # the client's mirror of TaskMarket.Status, checked against the contract below


@dataclass(frozen=True)
class TaskView:
    requester: str
    price: int
    deadline: int
    timeout: int
    lease: int
    status: St
    validators: int
    seats_taken: int
    submitted: int


def revert_data(exc: BaseException) -> bytes | None:
    """The raw revert payload, wherever this web3/eth-tester pair put it."""
    seen: BaseException | None = exc
    while seen is not None:
        data = getattr(seen, "data", None)
        if isinstance(data, str) and data.startswith("0x"):
            return bytes.fromhex(data[2:])
        for arg in getattr(seen, "args", ()):
            if isinstance(arg, (bytes, bytearray)):
                return bytes(arg)
            if isinstance(arg, str) and "execution reverted: b" in arg:
                literal = arg.split("execution reverted: ", 1)[1]
                with contextlib.suppress(ValueError, SyntaxError):
                    value = ast.literal_eval(literal)
                    if isinstance(value, bytes):
                        return value
        seen = seen.__cause__ or seen.__context__
    return None


class Chain:
    """A fresh EVM with the market deployed, and the few verbs the tests need."""

    def __init__(self) -> None:
        self.w3 = Web3(EthereumTesterProvider())
        self.tester = self.w3.provider.ethereum_tester  # type: ignore[attr-defined]
        self.accounts = list(self.w3.eth.accounts)
        self.requester, self.w1, self.w2, self.w3_, self.stranger = self.accounts[:5]
        artifact = json.loads(ARTIFACT.read_text())
        self.abi = artifact["abi"]
        factory = self.w3.eth.contract(abi=self.abi, bytecode=artifact["bytecode"])
        receipt = self._mine(factory.constructor().transact({"from": self.accounts[0]}))
        self.market = self.w3.eth.contract(address=receipt["contractAddress"], abi=self.abi)
        self.selectors = {
            bytes(self.w3.keccak(text=f"{item['name']}()"))[:4]: item["name"]
            for item in self.abi
            if item["type"] == "error" and not item["inputs"]
        }

    # -- time ---------------------------------------------------------------

    def now(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def at(self, timestamp: int) -> None:
        """Make the next mined block carry exactly this timestamp."""
        self.tester.time_travel(timestamp)

    def travel(self, timestamp: int) -> None:
        self.tester.time_travel(timestamp)
        self.tester.mine_blocks()

    # -- transactions ---------------------------------------------------------

    def _mine(self, tx_hash: Any) -> Any:
        receipt = self.w3.eth.get_transaction_receipt(tx_hash)
        assert receipt["status"] == 1
        return receipt

    def send(self, fn: Any, sender: str, value: int = 0) -> Any:
        return self._mine(fn.transact({"from": sender, "value": value}))

    def gas_cost(self, receipt: Any) -> int:
        return int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"])

    def create(
        self,
        *,
        sender: str | None = None,
        price: int = PRICE,
        validators: int = 1,
        lease: int = 300,
        deadline: int | None = None,
        timeout: int = 600,
        cid: bytes = CID,
    ) -> tuple[int, Any]:
        deadline = deadline if deadline is not None else self.now() + 3600
        fn = self.market.functions.createTask(cid, timeout, lease, deadline, validators, 2, 2048)
        receipt = self.send(fn, sender or self.requester, price)
        (created,) = self.events(receipt, "TaskCreated")
        return int(created["taskId"]), receipt

    def claim(self, task_id: int, worker: str) -> Any:
        return self.send(self.market.functions.claim(task_id), worker)

    def submit(self, task_id: int, worker: str, digest: bytes = DIGEST_A, cid: bytes = RESULT_CID) -> Any:
        return self.send(self.market.functions.submitResult(task_id, digest, cid), worker)

    def events(self, receipt: Any, name: str) -> list[dict[str, Any]]:
        # DISCARD: a receipt also carries the helper contracts' logs.
        found = [dict(e["args"]) for e in self.market.events[name]().process_receipt(receipt, errors=DISCARD)]
        if name == "TaskCreated":  # the terms travel packed in one word; read them as the client does
            for args in found:
                args.update(unpack_terms(int(args.pop("terms"))))
        return found

    @contextlib.contextmanager
    def reverts(self, error: str) -> Iterator[None]:
        """The block must revert with the market's custom error `error`."""
        with pytest.raises(Exception) as info:
            yield
        data = revert_data(info.value)
        assert data is not None, f"expected {error}, got {info.value!r}"
        got = self.selectors.get(data[:4], data.hex())
        assert got == error, f"expected {error}, got {got}"

    # -- reads ----------------------------------------------------------------

    def task(self, task_id: int) -> TaskView:
        raw = self.market.functions.getTask(task_id).call()
        return TaskView(raw[0], raw[1], raw[2], raw[3], raw[4], St(raw[5]), raw[6], raw[7], raw[8])

    def seat(self, task_id: int, seat: int) -> tuple[str, int, bool, bytes]:
        worker, expiry, submitted, digest = self.market.functions.getSeat(task_id, seat).call()
        return worker, int(expiry), bool(submitted), bytes(digest)

    def balance(self, who: Any) -> int:
        return int(self.w3.eth.get_balance(who))

    def escrow(self) -> int:
        return self.balance(self.market.address)

    def owed(self, who: str) -> int:
        return int(self.market.functions.owed(who).call())

    # -- helper contracts --------------------------------------------------------

    def deploy_actor(self) -> Any:
        helpers = json.loads(HELPERS.read_text())["contracts"]["MarketActor"]
        factory = self.w3.eth.contract(abi=helpers["abi"], bytecode=helpers["bytecode"])
        receipt = self.send(factory.constructor(self.market.address), self.accounts[9])
        return self.w3.eth.contract(address=receipt["contractAddress"], abi=helpers["abi"])

    def encode(self, name: str, *args: Any) -> bytes:
        return bytes.fromhex(self.market.encode_abi(name, args=list(args))[2:])

    def via(self, actor: Any, name: str, *args: Any, value: int = 0) -> Any:
        """Have the actor contract call the market (it becomes msg.sender)."""
        return self.send(actor.functions.act(self.encode(name, *args)), self.accounts[9], value)


@pytest.fixture
def chain() -> Chain:
    return Chain()


ZERO_ADDRESS = "0x" + "00" * 20


# ---------------------------------------------------------------------- artifact


def test_artifact_matches_source() -> None:
    artifact = json.loads(ARTIFACT.read_text())
    assert artifact["sourceSha256"] == hashlib.sha256(SOURCE.read_bytes()).hexdigest(), (
        "TaskMarket.sol changed since the artifact was built: run `node scripts/build_contract.js`"
    )
    assert artifact["compiler"]["evmVersion"] == "cancun"
    assert artifact["compiler"]["optimizer"]["enabled"] is True
    assert list(artifact) == [
        "contractName",
        "compiler",
        "sourceSha256",
        "abi",
        "bytecode",
        "deployedBytecode",
    ]
    helpers = json.loads(HELPERS.read_text())
    for name, digest in helpers["sourceSha256"].items():
        assert digest == hashlib.sha256((HELPERS.parent / name).read_bytes()).hexdigest(), (
            f"tests/contracts/{name} changed since Helpers.json was built: run `node scripts/build_contract.js`"
        )

    node = shutil.which("node")
    solc = ROOT / "scripts" / "node_modules" / "solc"
    if node is None or not solc.is_dir():
        pytest.skip(
            "RECOMPILE CHECK SKIPPED: needs node and the pinned solc "
            "(npm install --prefix scripts); only the source hash was checked"
        )
    done = subprocess.run(
        [node, str(BUILD_SCRIPT), "--check"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"recompiling does not reproduce the committed artifacts:\n{done.stderr}"


def test_interface_constants(chain: Chain) -> None:
    assert chain.market.functions.MAX_VALIDATORS().call() == 16
    assert chain.market.functions.taskCount().call() == 0
    assert chain.task(1) == TaskView(ZERO_ADDRESS, 0, 0, 0, 0, St.NONE, 0, 0, 0)


# ---------------------------------------------------------------------- create


def test_create_escrows_price_and_emits_event(chain: Chain) -> None:
    deadline = chain.now() + 3600
    fn = chain.market.functions.createTask(CID, 600, 300, deadline, 1, 4, 8192)
    receipt = chain.send(fn, chain.requester, PRICE)
    (event,) = chain.events(receipt, "TaskCreated")
    assert event == {
        "taskId": 1,
        "requester": chain.requester,
        "price": PRICE,
        "inputCid": CID,
        "deadline": deadline,
        "timeout": 600,
        "lease": 300,
        "validators": 1,
        "cpus": 4,
        "memoryMb": 8192,
    }
    assert chain.escrow() == PRICE
    assert chain.task(1) == TaskView(chain.requester, PRICE, deadline, 600, 300, St.OPEN, 1, 0, 0)
    second, _ = chain.create(price=3 * PRICE)
    assert second == 2
    assert chain.market.functions.taskCount().call() == 2
    assert chain.escrow() == 4 * PRICE


@pytest.mark.parametrize(
    "change, error",
    [
        ({"price": 0}, "BadPrice"),
        ({"validators": 0}, "BadValidators"),
        ({"validators": 17}, "BadValidators"),
        ({"lease": 0}, "BadLease"),
        ({"timeout": 2**24}, "BadTimeout"),
        ({"deadline": 0}, "BadDeadline"),
        ({"deadline": "now"}, "BadDeadline"),
        ({"cid": b""}, "EmptyInputCid"),
    ],
)
def test_create_rejects_bad_terms(chain: Chain, change: dict[str, Any], error: str) -> None:
    if change.get("deadline") == "now":
        timestamp = chain.now() + 10
        chain.at(timestamp)
        change = {"deadline": timestamp}
    with chain.reverts(error):
        chain.create(**change)
    assert chain.escrow() == 0


def test_create_accepts_sixteen_validators(chain: Chain) -> None:
    task_id, _ = chain.create(validators=16)
    assert chain.task(task_id).validators == 16


def test_batch_create(chain: Chain) -> None:
    chain.create()  # the batch must continue the id sequence
    deadline = chain.now() + 3600
    cids = [CID + bytes([i]) for i in range(5)]
    fn = chain.market.functions.createTasks(cids, 600, 120, deadline, 2, 1, 512)
    receipt = chain.send(fn, chain.requester, 5 * PRICE)
    events = chain.events(receipt, "TaskCreated")
    assert [e["taskId"] for e in events] == [2, 3, 4, 5, 6]
    assert [e["inputCid"] for e in events] == cids
    assert {
        (e["price"], e["requester"], e["validators"], e["lease"], e["cpus"], e["memoryMb"]) for e in events
    } == {(PRICE, chain.requester, 2, 120, 1, 512)}
    assert fn.call({"from": chain.requester, "value": 5 * PRICE}) == 7  # the next batch would start here
    assert chain.escrow() == 6 * PRICE
    for task_id in range(2, 7):
        assert chain.task(task_id) == TaskView(chain.requester, PRICE, deadline, 600, 120, St.OPEN, 2, 0, 0)
    assert chain.market.functions.taskCount().call() == 6
    assert chain.create()[0] == 7

    # A member of a batch settles on its own, with its own share of the value.
    chain.claim(4, chain.w1)
    chain.claim(4, chain.w2)
    before = chain.balance(chain.w1)
    cost = chain.gas_cost(chain.submit(4, chain.w1))
    chain.submit(4, chain.w2)
    assert chain.balance(chain.w1) - before + cost == PRICE // 2
    with chain.reverts("NotRequester"):
        chain.send(chain.market.functions.cancel(5), chain.stranger)
    before = chain.balance(chain.requester)
    cost = chain.gas_cost(chain.send(chain.market.functions.cancel(5), chain.requester))
    assert chain.balance(chain.requester) - before + cost == PRICE
    assert chain.task(6).status == St.OPEN
    assert chain.escrow() == 5 * PRICE  # tasks 1, 2, 3, 6 and 7


@pytest.mark.parametrize(
    "cids, value, error",
    [
        ([], PRICE, "EmptyBatch"),
        ([CID, CID, CID], PRICE, "UnevenBatchValue"),
        ([CID, CID], 1, "UnevenBatchValue"),
        ([CID, CID], 0, "BadPrice"),
        ([CID, b""], 2 * PRICE, "EmptyInputCid"),
    ],
)
def test_batch_create_rejects(chain: Chain, cids: list[bytes], value: int, error: str) -> None:
    fn = chain.market.functions.createTasks(cids, 600, 120, chain.now() + 3600, 1, 1, 512)
    with chain.reverts(error):
        chain.send(fn, chain.requester, value)
    assert chain.market.functions.taskCount().call() == 0


# ---------------------------------------------------------------------- claim


def test_claim_takes_a_seat(chain: Chain) -> None:
    task_id, _ = chain.create(lease=300)
    timestamp = chain.now() + 5
    chain.at(timestamp)
    receipt = chain.claim(task_id, chain.w1)
    assert chain.events(receipt, "TaskClaimed") == [
        {"taskId": task_id, "worker": chain.w1, "seat": 0, "leaseExpiry": timestamp + 300}
    ]
    assert chain.seat(task_id, 0) == (chain.w1, timestamp + 300, False, b"\0" * 32)
    view = chain.task(task_id)
    assert (view.status, view.seats_taken, view.submitted) == (St.CLAIMED, 1, 0)
    with chain.reverts("NoFreeSeat"):
        chain.claim(task_id, chain.w2)
    with chain.reverts("NoSuchSeat"):
        chain.seat(task_id, 1)


def test_lease_expiry_is_capped_at_the_deadline(chain: Chain) -> None:
    deadline = chain.now() + 100
    task_id, _ = chain.create(lease=10_000, deadline=deadline)
    receipt = chain.claim(task_id, chain.w1)
    assert chain.events(receipt, "TaskClaimed")[0]["leaseExpiry"] == deadline


def test_claim_refusals(chain: Chain) -> None:
    with chain.reverts("NoSuchTask"):
        chain.claim(1, chain.w1)
    deadline = chain.now() + 100
    task_id, _ = chain.create(deadline=deadline, validators=2)
    chain.claim(task_id, chain.w1)
    with chain.reverts("AlreadySeated"):
        chain.claim(task_id, chain.w1)
    chain.at(deadline)
    chain.claim(task_id, chain.w2)  # the deadline itself is still in time
    other, _ = chain.create(deadline=deadline + 10)
    chain.travel(deadline + 11)
    with chain.reverts("DeadlinePassed"):
        chain.claim(other, chain.w1)


def test_seats_go_to_distinct_workers_and_status_follows(chain: Chain) -> None:
    task_id, _ = chain.create(validators=3)
    for n, worker in enumerate((chain.w1, chain.w2, chain.w3_), start=1):
        receipt = chain.claim(task_id, worker)
        assert chain.events(receipt, "TaskClaimed")[0]["seat"] == n - 1
        view = chain.task(task_id)
        assert view.seats_taken == n
        assert view.status == (St.CLAIMED if n == 3 else St.OPEN)
    with chain.reverts("AlreadySeated"):
        chain.claim(task_id, chain.w2)
    with chain.reverts("NoFreeSeat"):
        chain.claim(task_id, chain.stranger)


# ---------------------------------------------------------------------- submit


def test_single_validator_submit_pays_the_worker(chain: Chain) -> None:
    task_id, _ = chain.create()
    chain.claim(task_id, chain.w1)
    before = chain.balance(chain.w1)
    receipt = chain.submit(task_id, chain.w1, DIGEST_A, RESULT_CID)
    assert chain.balance(chain.w1) - before + chain.gas_cost(receipt) == PRICE
    assert chain.events(receipt, "ResultSubmitted") == [
        {"taskId": task_id, "worker": chain.w1, "resultDigest": DIGEST_A, "resultCid": RESULT_CID}
    ]
    assert chain.events(receipt, "TaskCompleted") == [
        {"taskId": task_id, "resultDigest": DIGEST_A, "paidPerWorker": PRICE}
    ]
    assert chain.events(receipt, "PaymentDeferred") == []
    view = chain.task(task_id)
    assert (view.status, view.submitted, view.price, view.requester) == (
        St.COMPLETED,
        1,
        PRICE,
        chain.requester,
    )
    assert chain.escrow() == 0
    assert chain.owed(chain.w1) == 0
    with chain.reverts("TaskNotOpen"):
        chain.submit(task_id, chain.w1)
    with chain.reverts("TaskNotOpen"):
        chain.claim(task_id, chain.w2)


def test_an_unclaimed_single_validator_task_is_settled_by_the_first_result(chain: Chain) -> None:
    task_id, _ = chain.create()
    before = chain.balance(chain.w2)
    receipt = chain.submit(task_id, chain.w2)  # no claim first
    assert chain.events(receipt, "ResultSubmitted") == [
        {"taskId": task_id, "worker": chain.w2, "resultDigest": DIGEST_A, "resultCid": RESULT_CID}
    ]
    assert chain.events(receipt, "TaskCompleted")[0]["paidPerWorker"] == PRICE
    assert chain.balance(chain.w2) - before + chain.gas_cost(receipt) == PRICE
    assert chain.task(task_id).status == St.COMPLETED
    assert chain.escrow() == 0
    with chain.reverts("TaskNotOpen"):  # the second worker to finish was too late
        chain.submit(task_id, chain.w1)


def test_a_claim_keeps_direct_submissions_out_while_it_is_held(chain: Chain) -> None:
    task_id, _ = chain.create()
    chain.claim(task_id, chain.w1)
    with chain.reverts("NotSeatHolder"):
        chain.submit(task_id, chain.w2)
    chain.send(chain.market.functions.release(task_id), chain.w1)
    chain.submit(task_id, chain.w2)  # released: open to anyone again
    assert chain.task(task_id).status == St.COMPLETED


def test_requesters_taking_turns_each_get_their_own_refunds(chain: Chain) -> None:
    """The contract remembers the last requester to save a read: turns must not mix them up."""
    a, b = chain.requester, chain.stranger
    first, _ = chain.create(sender=a)
    second, _ = chain.create(sender=b)
    third, _ = chain.create(sender=a)
    fourth, _ = chain.create(sender=b, price=2 * PRICE)
    assert [chain.task(t).requester for t in (first, second, third, fourth)] == [a, b, a, b]
    for task_id, owner in ((first, a), (second, b), (third, a), (fourth, b)):
        other = b if owner == a else a
        with chain.reverts("NotRequester"):
            chain.send(chain.market.functions.cancel(task_id), other)
        before = chain.balance(owner)
        receipt = chain.send(chain.market.functions.cancel(task_id), owner)
        assert chain.balance(owner) - before + chain.gas_cost(receipt) == chain.task(task_id).price
    assert chain.escrow() == 0


def test_only_a_seat_holder_can_submit(chain: Chain) -> None:
    task_id, _ = chain.create(validators=2)
    with chain.reverts("NotSeatHolder"):
        chain.submit(task_id, chain.w1)
    chain.claim(task_id, chain.w1)
    with chain.reverts("NotSeatHolder"):
        chain.submit(task_id, chain.stranger)
    with chain.reverts("NoSuchTask"):
        chain.submit(task_id + 1, chain.w1)
    assert chain.escrow() == PRICE


def test_a_seat_cannot_submit_twice(chain: Chain) -> None:
    task_id, _ = chain.create(validators=2)
    chain.claim(task_id, chain.w1)
    chain.claim(task_id, chain.w2)
    chain.submit(task_id, chain.w1)
    assert chain.seat(task_id, 0) == (chain.w1, chain.seat(task_id, 0)[1], True, DIGEST_A)
    with chain.reverts("AlreadySubmitted"):
        chain.submit(task_id, chain.w1)
    with chain.reverts("AlreadySubmitted"):
        chain.send(chain.market.functions.release(task_id), chain.w1)
    assert chain.task(task_id).submitted == 1


def test_submit_after_the_deadline_is_refused(chain: Chain) -> None:
    deadline = chain.now() + 100
    task_id, _ = chain.create(deadline=deadline)
    chain.claim(task_id, chain.w1)
    chain.at(deadline + 1)
    with chain.reverts("DeadlinePassed"):
        chain.submit(task_id, chain.w1)


def test_two_validators_agreeing_share_the_price(chain: Chain) -> None:
    price = 10**16 + 1  # odd: the last submitter gets the remainder
    task_id, _ = chain.create(validators=2, price=price)
    chain.claim(task_id, chain.w1)
    chain.claim(task_id, chain.w2)
    before = {w: chain.balance(w) for w in (chain.w1, chain.w2)}
    first = chain.submit(task_id, chain.w2, DIGEST_A)
    assert chain.events(first, "TaskCompleted") == []
    assert chain.task(task_id).status == St.CLAIMED
    assert chain.seat(task_id, 1)[2:] == (True, DIGEST_A)
    assert chain.seat(task_id, 0)[2:] == (False, b"\0" * 32)
    last = chain.submit(task_id, chain.w1, DIGEST_A)
    assert chain.events(last, "TaskCompleted") == [
        {"taskId": task_id, "resultDigest": DIGEST_A, "paidPerWorker": price // 2}
    ]
    assert chain.balance(chain.w2) - before[chain.w2] + chain.gas_cost(first) == price // 2
    assert chain.balance(chain.w1) - before[chain.w1] + chain.gas_cost(last) == price - price // 2
    view = chain.task(task_id)
    assert (view.status, view.submitted) == (St.COMPLETED, 2)
    assert chain.escrow() == 0


def test_two_validators_disagreeing_refund_the_requester(chain: Chain) -> None:
    task_id, _ = chain.create(validators=2)
    chain.claim(task_id, chain.w1)
    chain.claim(task_id, chain.w2)
    workers_before = {w: chain.balance(w) for w in (chain.w1, chain.w2)}
    requester_before = chain.balance(chain.requester)
    costs = {chain.w1: chain.gas_cost(chain.submit(task_id, chain.w1, DIGEST_A))}
    receipt = chain.submit(task_id, chain.w2, DIGEST_B)
    costs[chain.w2] = chain.gas_cost(receipt)
    assert chain.events(receipt, "TaskDisputed") == [
        {"taskId": task_id, "workers": [chain.w1, chain.w2], "digests": [DIGEST_A, DIGEST_B]}
    ]
    assert chain.events(receipt, "TaskCompleted") == []
    assert chain.task(task_id).status == St.DISPUTED
    assert chain.balance(chain.requester) - requester_before == PRICE
    for worker, before in workers_before.items():
        assert chain.balance(worker) - before + costs[worker] == 0
    assert chain.escrow() == 0
    with chain.reverts("TaskNotOpen"):
        chain.send(chain.market.functions.reclaim(task_id), chain.requester)


def test_dispute_lists_only_the_submissions_so_far(chain: Chain) -> None:
    task_id, _ = chain.create(validators=3)
    for worker in (chain.w1, chain.w2, chain.w3_):
        chain.claim(task_id, worker)
    chain.submit(task_id, chain.w3_, DIGEST_A)
    receipt = chain.submit(task_id, chain.w1, DIGEST_B)
    assert chain.events(receipt, "TaskDisputed") == [
        {"taskId": task_id, "workers": [chain.w3_, chain.w1], "digests": [DIGEST_A, DIGEST_B]}
    ]
    with chain.reverts("TaskNotOpen"):
        chain.submit(task_id, chain.w2, DIGEST_A)


# ---------------------------------------------------------------------- leases


def test_expired_lease_lets_another_worker_take_the_seat(chain: Chain) -> None:
    task_id, _ = chain.create(lease=60)
    start = chain.now() + 1
    chain.at(start)
    chain.claim(task_id, chain.w1)
    chain.at(start + 60)  # the lease's last second still belongs to w1
    with chain.reverts("NoFreeSeat"):
        chain.claim(task_id, chain.w2)
    chain.at(start + 61)
    receipt = chain.claim(task_id, chain.w2)
    assert chain.events(receipt, "TaskClaimed") == [
        {"taskId": task_id, "worker": chain.w2, "seat": 0, "leaseExpiry": start + 61 + 60}
    ]
    view = chain.task(task_id)
    assert (view.status, view.seats_taken) == (St.CLAIMED, 1)
    with chain.reverts("NotSeatHolder"):
        chain.submit(task_id, chain.w1)
    before = chain.balance(chain.w2)
    cost = chain.gas_cost(chain.submit(task_id, chain.w2))
    assert chain.balance(chain.w2) - before + cost == PRICE


def test_expired_holder_may_submit_while_nobody_took_over(chain: Chain) -> None:
    task_id, _ = chain.create(lease=60)
    chain.claim(task_id, chain.w1)
    chain.travel(chain.now() + 1000)
    receipt = chain.submit(task_id, chain.w1)
    assert chain.events(receipt, "TaskCompleted")[0]["paidPerWorker"] == PRICE


def test_takeover_keeps_submitted_seats(chain: Chain) -> None:
    task_id, _ = chain.create(lease=60, validators=2)
    chain.claim(task_id, chain.w1)
    chain.claim(task_id, chain.w2)
    chain.submit(task_id, chain.w1)
    chain.travel(chain.now() + 1000)
    receipt = chain.claim(task_id, chain.w3_)  # only w2's idle seat can change hands
    assert chain.events(receipt, "TaskClaimed")[0]["seat"] == 1
    with chain.reverts("NoFreeSeat"):
        chain.claim(task_id, chain.stranger)
    final = chain.submit(task_id, chain.w3_)
    assert chain.events(final, "TaskCompleted")[0]["paidPerWorker"] == PRICE // 2


def test_release_frees_the_seat(chain: Chain) -> None:
    task_id, _ = chain.create()
    chain.claim(task_id, chain.w1)
    receipt = chain.send(chain.market.functions.release(task_id), chain.w1)
    assert chain.events(receipt, "TaskReleased") == [{"taskId": task_id, "worker": chain.w1, "seat": 0}]
    view = chain.task(task_id)
    assert (view.status, view.seats_taken) == (St.OPEN, 0)
    assert chain.seat(task_id, 0) == (ZERO_ADDRESS, 0, False, b"\0" * 32)
    with chain.reverts("NotSeatHolder"):
        chain.send(chain.market.functions.release(task_id), chain.w1)
    chain.claim(task_id, chain.w2)
    assert chain.seat(task_id, 0)[0] == chain.w2
    with chain.reverts("NotSeatHolder"):
        chain.submit(task_id, chain.w1)
    chain.submit(task_id, chain.w2)
    with chain.reverts("TaskNotOpen"):
        chain.send(chain.market.functions.release(task_id), chain.w2)


# ---------------------------------------------------------------------- requester


def test_cancel_refunds_an_unclaimed_task(chain: Chain) -> None:
    task_id, _ = chain.create()
    with chain.reverts("NotRequester"):
        chain.send(chain.market.functions.cancel(task_id), chain.w1)
    before = chain.balance(chain.requester)
    receipt = chain.send(chain.market.functions.cancel(task_id), chain.requester)
    assert chain.balance(chain.requester) - before + chain.gas_cost(receipt) == PRICE
    assert chain.events(receipt, "TaskCancelled") == [{"taskId": task_id, "refund": PRICE}]
    assert chain.task(task_id).status == St.CANCELLED
    assert chain.escrow() == 0
    with chain.reverts("TaskNotOpen"):
        chain.send(chain.market.functions.cancel(task_id), chain.requester)
    with chain.reverts("TaskNotOpen"):
        chain.claim(task_id, chain.w1)
    with chain.reverts("NoSuchTask"):
        chain.send(chain.market.functions.cancel(task_id + 1), chain.requester)


def test_cancel_is_refused_while_a_worker_holds_a_seat(chain: Chain) -> None:
    task_id, _ = chain.create(lease=60)
    chain.claim(task_id, chain.w1)
    with chain.reverts("SeatsHeld"):
        chain.send(chain.market.functions.cancel(task_id), chain.requester)
    partial, _ = chain.create(lease=60, validators=2)
    chain.claim(partial, chain.w1)
    assert chain.task(partial).status == St.OPEN
    with chain.reverts("SeatsHeld"):
        chain.send(chain.market.functions.cancel(partial), chain.requester)
    chain.travel(chain.now() + 1000)  # w1's lease ran out and it never submitted
    receipt = chain.send(chain.market.functions.cancel(partial), chain.requester)
    assert chain.events(receipt, "TaskCancelled") == [{"taskId": partial, "refund": PRICE}]
    assert chain.seat(partial, 0)[0] == ZERO_ADDRESS
    assert chain.escrow() == PRICE


def test_cancel_is_refused_once_work_was_submitted(chain: Chain) -> None:
    task_id, _ = chain.create(lease=60, validators=2)
    chain.claim(task_id, chain.w1)
    chain.submit(task_id, chain.w1)
    chain.travel(chain.now() + 1000)
    with chain.reverts("SeatsHeld"):
        chain.send(chain.market.functions.cancel(task_id), chain.requester)


def test_reclaim_after_the_deadline(chain: Chain) -> None:
    deadline = chain.now() + 100
    idle, _ = chain.create(deadline=deadline)
    claimed, _ = chain.create(deadline=deadline, validators=2)
    chain.claim(claimed, chain.w1)
    chain.claim(claimed, chain.w2)
    chain.submit(claimed, chain.w1)
    done, _ = chain.create(deadline=deadline)
    chain.claim(done, chain.w1)
    chain.submit(done, chain.w1)
    chain.at(deadline)
    with chain.reverts("DeadlineNotPassed"):
        chain.send(chain.market.functions.reclaim(idle), chain.requester)
    chain.travel(deadline + 1)
    with chain.reverts("NotRequester"):
        chain.send(chain.market.functions.reclaim(idle), chain.stranger)
    for task_id in (idle, claimed):
        before = chain.balance(chain.requester)
        receipt = chain.send(chain.market.functions.reclaim(task_id), chain.requester)
        assert chain.balance(chain.requester) - before + chain.gas_cost(receipt) == PRICE
        assert chain.events(receipt, "TaskNotProcessed") == [{"taskId": task_id, "refund": PRICE}]
        assert chain.task(task_id).status == St.NOT_PROCESSED
    with chain.reverts("TaskNotOpen"):
        chain.send(chain.market.functions.reclaim(done), chain.requester)
    with chain.reverts("TaskNotOpen"):
        chain.send(chain.market.functions.reclaim(idle), chain.requester)
    assert chain.escrow() == 0


# ---------------------------------------------------------------------- contracts as parties


def test_worker_that_refuses_payment_is_credited_and_withdraws(chain: Chain) -> None:
    actor = chain.deploy_actor()
    chain.send(actor.functions.setRejecting(True), chain.accounts[9])
    task_id, _ = chain.create()
    chain.via(actor, "claim", task_id)
    receipt = chain.via(actor, "submitResult", task_id, DIGEST_A, RESULT_CID)
    assert chain.task(task_id).status == St.COMPLETED  # the refusal did not block completion
    assert chain.events(receipt, "PaymentDeferred") == [{"to": actor.address, "amount": PRICE}]
    assert chain.owed(actor.address) == PRICE
    assert chain.escrow() == PRICE
    assert chain.balance(actor.address) == 0

    with chain.reverts("TransferFailed"):
        chain.via(actor, "withdraw")
    assert chain.owed(actor.address) == PRICE

    chain.send(actor.functions.setRejecting(False), chain.accounts[9])
    receipt = chain.via(actor, "withdraw")
    assert chain.events(receipt, "Withdrawal") == [{"to": actor.address, "amount": PRICE}]
    assert chain.balance(actor.address) == PRICE
    assert chain.owed(actor.address) == 0
    assert chain.escrow() == 0
    with chain.reverts("NothingOwed"):
        chain.via(actor, "withdraw")


def test_requester_that_refuses_a_refund_is_credited(chain: Chain) -> None:
    actor = chain.deploy_actor()
    chain.send(actor.functions.setRejecting(True), chain.accounts[9])
    chain.via(actor, "createTask", CID, 600, 300, chain.now() + 3600, 1, 1, 256, value=PRICE)
    receipt = chain.via(actor, "cancel", 1)
    assert chain.task(1).status == St.CANCELLED
    assert chain.events(receipt, "PaymentDeferred") == [{"to": actor.address, "amount": PRICE}]
    assert chain.owed(actor.address) == PRICE
    assert chain.escrow() == PRICE


def _reentry_setups(chain: Chain, actor: Any) -> dict[str, bytes]:
    """For each entry point, a call that would succeed if the guard were missing."""
    open_task, _ = chain.create()
    seated, _ = chain.create()
    chain.via(actor, "claim", seated)
    # Leave the actor something to withdraw.
    chain.send(actor.functions.setRejecting(True), chain.accounts[9])
    owed_task, _ = chain.create()
    chain.via(actor, "claim", owed_task)
    chain.via(actor, "submitResult", owed_task, DIGEST_A, RESULT_CID)
    chain.send(actor.functions.setRejecting(False), chain.accounts[9])
    return {
        "claim": chain.encode("claim", open_task),
        "submitResult": chain.encode("submitResult", seated, DIGEST_A, RESULT_CID),
        "withdraw": chain.encode("withdraw"),
        "release": chain.encode("release", seated),
    }


@pytest.mark.parametrize("entry", ["claim", "submitResult", "withdraw", "release"])
def test_reentrant_worker_is_refused_and_paid_once(chain: Chain, entry: str) -> None:
    actor = chain.deploy_actor()
    payloads = _reentry_setups(chain, actor)
    owed_before = chain.owed(actor.address)
    escrow_before = chain.escrow()
    assert payloads[entry]  # each payload succeeds on its own; see the control test below

    chain.send(actor.functions.setReentry(payloads[entry]), chain.accounts[9])
    task_id, _ = chain.create()
    chain.via(actor, "claim", task_id)
    receipt = chain.via(actor, "submitResult", task_id, DIGEST_B, RESULT_CID)

    reentered = [dict(e["args"]) for e in actor.events.Reentered().process_receipt(receipt, errors=DISCARD)]
    assert len(reentered) == 1
    assert reentered[0]["ok"] is False
    assert chain.selectors.get(bytes(reentered[0]["returned"])[:4]) == "Reentrancy"
    assert chain.task(task_id).status == St.COMPLETED
    assert chain.balance(actor.address) == PRICE  # exactly one payment for this task
    assert chain.owed(actor.address) == owed_before
    assert chain.escrow() == escrow_before
    assert chain.events(receipt, "PaymentDeferred") == []


@pytest.mark.parametrize("entry", ["claim", "submitResult", "withdraw", "release"])
def test_reentry_payloads_work_outside_a_payment(chain: Chain, entry: str) -> None:
    """Control for the test above: the refused calls are refused only for re-entering."""
    actor = chain.deploy_actor()
    payload = _reentry_setups(chain, actor)[entry]
    chain.send(actor.functions.act(payload), chain.accounts[9])


def test_reentrant_requester_is_refused(chain: Chain) -> None:
    actor = chain.deploy_actor()
    for _ in range(2):
        chain.via(actor, "createTask", CID, 600, 300, chain.now() + 3600, 1, 1, 256, value=PRICE)
    chain.send(actor.functions.setReentry(chain.encode("cancel", 2)), chain.accounts[9])
    receipt = chain.via(actor, "cancel", 1)
    reentered = [dict(e["args"]) for e in actor.events.Reentered().process_receipt(receipt, errors=DISCARD)]
    assert [r["ok"] for r in reentered] == [False]
    assert chain.selectors.get(bytes(reentered[0]["returned"])[:4]) == "Reentrancy"
    assert chain.balance(actor.address) == PRICE
    assert chain.task(2).status == St.OPEN
    assert chain.escrow() == PRICE


# ---------------------------------------------------------------------- gas


def test_gas_budget(chain: Chain, capsys: pytest.CaptureFixture[str]) -> None:
    chain.create()  # the first task ever also pays for the counters and the requester's registration
    task_id, create = chain.create()
    direct = chain.submit(task_id, chain.w1)
    task_id, _ = chain.create()
    claim = chain.claim(task_id, chain.w1)
    submit = chain.submit(task_id, chain.w1)
    cids = [CID + i.to_bytes(2, "big") for i in range(100)]
    batch_fn = chain.market.functions.createTasks(cids, 600, 300, chain.now() + 3600, 1, 1, 512)
    batch = chain.send(batch_fn, chain.requester, 100 * PRICE)
    ids = [e["taskId"] for e in chain.events(batch, "TaskCreated")]
    settle_fn = chain.market.functions.submitResults(ids, [DIGEST_A] * 100, [RESULT_CID] * 100)
    settle = chain.send(settle_fn, chain.w2)
    figures = {
        "createTask": create["gasUsed"],
        "submitResult (unclaimed)": direct["gasUsed"],
        "claim": claim["gasUsed"],
        "submitResult (claimed)": submit["gasUsed"],
        "createTasks(100) per task": batch["gasUsed"] / 100,
        "submitResults(100) per task": settle["gasUsed"] / 100,
    }
    with capsys.disabled():
        print("\nTaskMarket gas: " + ", ".join(f"{k}={v:,.0f}" for k, v in figures.items()))
    # The budgets of a single-validator lifecycle: 100k for one task, 50k per task in batches of 100.
    assert figures["createTask"] + figures["submitResult (unclaimed)"] <= 100_000
    assert figures["createTasks(100) per task"] + figures["submitResults(100) per task"] <= 50_000
    # Regression guards a little above today's figures.
    assert figures["claim"] <= 57_000
    assert figures["submitResult (claimed)"] <= 45_000


def test_the_clients_status_names_follow_the_contracts_enum() -> None:
    """``ChainStatus`` decodes the contract's ``Status``: same members, same order."""
    body = re.search(r"enum Status \{([^}]*)\}", SOURCE.read_text())
    assert body is not None, "TaskMarket.sol declares no `enum Status`"
    declared = [name.strip() for name in body.group(1).split(",")]
    assert [s.name.replace("_", "").lower() for s in ChainStatus] == [n.lower() for n in declared]

