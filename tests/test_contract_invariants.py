"""TaskMarket under random use, checked against a small Python model of its rules.

Hypothesis drives random create / claim / submit / report-failure / release /
cancel / reclaim / withdraw calls from random parties (three keys and one
contract that can refuse payments) and moves the clock. Every call's outcome (success, or which custom
error) must match the model, and after every step:

* the contract holds exactly the escrow of live tasks plus what it owes;
* every party's balance is exactly what the model paid it (so nothing is paid
  twice or to the wrong party);
* a task ends at most once.

Success of a submit (cancel, reclaim) is also asserted directly to have come
from a seat holder (the requester).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# py-evm raises the recursion limit when first imported; importing it here,
# not inside the first example, keeps Hypothesis from warning that the limit
# changed under it.
import eth  # noqa: F401
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from test_contract import revert_data
from web3 import EthereumTesterProvider, Web3
from web3.logs import DISCARD

ROOT = Path(__file__).resolve().parents[1]
ARTIFACT = ROOT / "decloud_magics" / "chain" / "contracts" / "TaskMarket.json"
HELPERS = ROOT / "tests" / "contracts" / "Helpers.json"

OPEN, CLAIMED, COMPLETED, NOT_PROCESSED, CANCELLED, DISPUTED, FAILED = 1, 2, 3, 4, 5, 6, 7
LIVE = (OPEN, CLAIMED)
DIGEST_A = b"\xaa" * 32
DIGEST_B = b"\xbb" * 32
CID = b"bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
TX_GAS = 3_000_000
TERMINAL_EVENTS = ("TaskCompleted", "TaskCancelled", "TaskNotProcessed", "TaskDisputed", "TaskFailed")

# Few parties, so that random picks often collide (same worker twice, the
# requester as a worker, the contract on both sides).
PARTIES = 4  # three keys and the contract
# Stand-ins resolved per task: its requester, a holder of an unsubmitted seat,
# a party with no seat on it.
REQUESTER, HOLDER, NEWCOMER = PARTIES, PARTIES + 1, PARTIES + 2
ACTOR = PARTIES - 1  # the party that is a contract
ANYONE = st.integers(min_value=0, max_value=PARTIES - 1)
# Mostly the party the call is meant for, sometimes anyone else.
AS_WORKER = st.one_of(st.just(HOLDER), ANYONE)
AS_CLAIMER = st.one_of(st.just(NEWCOMER), st.just(HOLDER), ANYONE)
AS_REQUESTER = st.one_of(st.just(REQUESTER), ANYONE)
TASK = st.integers(min_value=0, max_value=15)
PRICES = st.sampled_from([1, 3, 10**15 + 1, 10**18])
VALIDATORS = st.sampled_from([1, 2, 3])
LEASES = st.sampled_from([20, 200])
WINDOWS = st.sampled_from([30, 300, 3000])
BATCH = st.integers(min_value=1, max_value=3)
DIGESTS = st.sampled_from([DIGEST_A, DIGEST_A, DIGEST_A, DIGEST_B])  # agreement is the common case


class Refused(Exception):
    """The model's prediction that the contract reverts with this error."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


@dataclass
class Seat:
    worker: str
    expiry: int
    submitted: bool = False


@dataclass
class Task:
    requester: str
    price: int
    deadline: int
    lease: int
    validators: int
    status: int = OPEN
    seats_taken: int = 0
    submitted: int = 0
    agreed: bytes | None = None
    seats: list[Seat | None] = field(default_factory=list)


class MarketMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.w3 = Web3(EthereumTesterProvider())
        self.tester = self.w3.provider.ethereum_tester  # type: ignore[attr-defined]
        accounts: list[Any] = list(self.w3.eth.accounts)
        self.operator = accounts[9]
        artifact = json.loads(ARTIFACT.read_text())
        factory = self.w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        address = self._deploy(factory.constructor())
        self.market = self.w3.eth.contract(address=address, abi=artifact["abi"])
        helper = json.loads(HELPERS.read_text())["contracts"]["MarketActor"]
        factory = self.w3.eth.contract(abi=helper["abi"], bytecode=helper["bytecode"])
        self.actor = self.w3.eth.contract(
            address=self._deploy(factory.constructor(address)), abi=helper["abi"]
        )
        self.parties = accounts[: PARTIES - 1] + [self.actor.address]
        self.errors = {
            bytes(self.w3.keccak(text=f"{item['name']}()"))[:4]: item["name"]
            for item in artifact["abi"]
            if item["type"] == "error" and not item["inputs"]
        }
        # Far enough ahead of the wall clock that every block time is ours to set.
        self.now = int(self.w3.eth.get_block("latest")["timestamp"]) + 100_000
        self.tester.time_travel(self.now)
        self.tester.mine_blocks()
        self.balances = {p: int(self.w3.eth.get_balance(p)) for p in self.parties + [self.operator]}
        self.owed: dict[str, int] = {p: 0 for p in self.parties}
        self.tasks: dict[int, Task] = {}
        self.rejecting = False
        self.ended: set[int] = set()
        # Tasks changed by the last step -> whether their seats changed too.
        self.touched: dict[int, bool] = {}

    def _deploy(self, constructor: Any) -> Any:
        tx_hash = constructor.transact({"from": self.operator})
        return self.w3.eth.get_transaction_receipt(tx_hash)["contractAddress"]

    # -- plumbing ----------------------------------------------------------------

    def _task_id(self, pick: int) -> int:
        """Mostly a live task (newest first), sometimes any task, rarely an id that does not exist."""
        if pick == 15:
            return len(self.tasks) + 1
        if pick == 14:
            return 0
        live = [i for i, t in self.tasks.items() if t.status in LIVE]
        pool = live if live and pick < 10 else list(self.tasks)
        return pool[-1 - pick % len(pool)]

    def _who(self, who: int, task_id: int | None = None) -> str:
        task = self.tasks.get(task_id) if task_id is not None else None
        if who == REQUESTER and task is not None:
            return task.requester
        if who == HOLDER and task is not None:
            holders = [s.worker for s in task.seats if s is not None and not s.submitted]
            if holders:
                return holders[0]
        if who == NEWCOMER and task is not None:
            seated = {s.worker for s in task.seats if s is not None}
            newcomers = [p for p in self.parties if p not in seated]
            if newcomers:
                return newcomers[len(self.tasks) % len(newcomers)]
        return self.parties[who % PARTIES]

    def _tick(self, seconds: int = 1) -> None:
        self.now += seconds
        self.tester.time_travel(self.now)

    def _pay(self, to: str, amount: int) -> None:
        if to == self.actor.address and self.rejecting:
            self.owed[to] += amount
        else:
            self.balances[to] += amount

    def _run(self, sender: str, name: str, args: list[Any], value: int, model: Any) -> bool:
        """Run `name` on chain and `model` on the model; both must agree on the outcome.

        Returns whether the call went through.
        """
        self._tick()
        origin: Any
        if sender == self.actor.address:
            data = self.market.encode_abi(name, args=args)
            fn, origin = self.actor.functions.act(bytes.fromhex(data[2:])), self.operator
        else:
            fn, origin = self.market.functions[name](*args), sender
        params = {"from": origin, "value": value}
        try:
            model()
            model_error = None
        except Refused as refusal:
            model_error = refusal.error
        if model_error is not None:
            try:
                fn.call(params, block_identifier="pending")
                chain_error = None
            except Exception as exc:  # noqa: BLE001 - any revert is decoded below
                data = revert_data(exc)
                assert data is not None, f"{name} failed without revert data: {exc!r}"
                chain_error = self.errors.get(data[:4], data.hex())
            assert chain_error == model_error, (
                f"{name}{tuple(args)} from {sender}: chain {chain_error}, model {model_error}"
            )
            return False
        # The model expects success: a revert mines with status 0 and fails below.
        receipt = self.w3.eth.get_transaction_receipt(fn.transact({**params, "gas": TX_GAS}))
        assert receipt["status"] == 1, (
            f"{name}{tuple(args)} from {sender}: chain reverted, model expected success"
        )
        self.balances[origin] -= int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"]) + value
        for event in TERMINAL_EVENTS:
            for log in self.market.events[event]().process_receipt(receipt, errors=DISCARD):
                task_id = int(log["args"]["taskId"])
                assert task_id not in self.ended, f"task {task_id} ended twice"
                self.ended.add(task_id)
        return True

    def _live(self, task_id: int) -> Task:
        task = self.tasks.get(task_id)
        if task is None:
            raise Refused("NoSuchTask")
        if task.status not in LIVE:
            raise Refused("TaskNotOpen")
        return task

    def _seat_of(self, task: Task, sender: str) -> int:
        for i, seat in enumerate(task.seats):
            if seat is not None and seat.worker == sender:
                if seat.submitted:
                    raise Refused("AlreadySubmitted")
                return i
        raise Refused("NotSeatHolder")

    def _submitter(self, task: Task, sender: str) -> int | None:
        """The sender's seat; None for a direct submission to a single-validator task nobody holds."""
        if task.validators == 1 and task.seats_taken == 0:
            return None
        return self._seat_of(task, sender)

    def _requester(self, task_id: int, sender: str) -> Task:
        task = self.tasks.get(task_id)
        if task is None:
            raise Refused("NoSuchTask")
        if task.requester != sender:
            raise Refused("NotRequester")
        return task

    # -- model + chain steps, by task and sender ----------------------------------

    def _create(self, sender: str, price: int, validators: int, lease: int, window: int, count: int) -> None:
        deadline = self.now + 1 + window

        def model() -> None:
            first = len(self.tasks) + 1
            for i in range(count):
                self.tasks[first + i] = Task(
                    sender, price, deadline, lease, validators, seats=[None] * validators
                )
                self.touched[first + i] = False

        if count > 1:
            self._run(
                sender,
                "createTasks",
                [[CID] * count, 60, lease, deadline, validators, 1, 256],
                price * count,
                model,
            )
        else:
            self._run(sender, "createTask", [CID, 60, lease, deadline, validators, 1, 256], price, model)

    def _claim(self, task_id: int, sender: str) -> bool:
        def model() -> None:
            task = self._live(task_id)
            now = self.now
            if now > task.deadline:
                raise Refused("DeadlinePassed")
            if any(s is not None and s.worker == sender for s in task.seats):
                raise Refused("AlreadySeated")
            free = [i for i, s in enumerate(task.seats) if s is None]
            stale = [
                i for i, s in enumerate(task.seats) if s is not None and not s.submitted and s.expiry < now
            ]
            if free:
                seat = free[0]
                task.seats_taken += 1
                if task.seats_taken == task.validators:
                    task.status = CLAIMED
            elif stale:
                seat = stale[0]
            else:
                raise Refused("NoFreeSeat")
            task.seats[seat] = Seat(sender, min(now + task.lease, task.deadline))
            self.touched[task_id] = True

        return self._run(sender, "claim", [task_id], 0, model)

    def _submit(self, task_id: int, sender: str, digest: bytes) -> None:
        task = self.tasks.get(task_id)
        was_holder = task is not None and any(
            s is not None and s.worker == sender and not s.submitted for s in task.seats
        )
        was_unclaimed_single = task is not None and task.validators == 1 and task.seats_taken == 0

        def model() -> None:
            task = self._live(task_id)
            if self.now > task.deadline:
                raise Refused("DeadlinePassed")
            seat = self._submitter(task, sender)
            self.touched[task_id] = True
            k = task.validators
            if k == 1:
                task.status, task.submitted = COMPLETED, 1
                task.seats = [None]
                self._pay(sender, task.price)
                return
            if task.submitted == 0:
                task.agreed = digest
            elif task.agreed != digest:
                task.status = DISPUTED
                task.submitted += 1
                task.seats, task.agreed = [None] * k, None
                self._pay(task.requester, task.price)
                return
            task.submitted += 1
            if task.submitted < k:
                task.seats[seat].submitted = True  # type: ignore[union-attr]
                return
            task.status = COMPLETED
            share = task.price // k
            workers = [s.worker for s in task.seats]  # type: ignore[union-attr]
            task.seats, task.agreed = [None] * k, None
            for i, worker in enumerate(workers):
                if i != seat:
                    self._pay(worker, share)
            self._pay(sender, task.price - share * (k - 1))

        if self._run(sender, "submitResult", [task_id, digest, CID], 0, model):
            assert was_holder or was_unclaimed_single, (
                "a submission was accepted from an account without a seat on a task somebody holds"
            )

    def _cancel(self, task_id: int, sender: str) -> None:
        def model() -> None:
            task = self._requester(task_id, sender)
            if task.status == CLAIMED:
                raise Refused("SeatsHeld")
            if task.status != OPEN:
                raise Refused("TaskNotOpen")
            if any(s is not None and (s.submitted or s.expiry >= self.now) for s in task.seats):
                raise Refused("SeatsHeld")
            task.status = CANCELLED
            task.seats = [None] * task.validators
            self._pay(sender, task.price)
            self.touched[task_id] = True

        if self._run(sender, "cancel", [task_id], 0, model):
            assert self.tasks[task_id].requester == sender

    def _reclaim(self, task_id: int, sender: str) -> None:
        def model() -> None:
            task = self._requester(task_id, sender)
            if task.status not in LIVE:
                raise Refused("TaskNotOpen")
            if self.now <= task.deadline:
                raise Refused("DeadlineNotPassed")
            task.status = NOT_PROCESSED
            task.seats, task.agreed = [None] * task.validators, None
            self._pay(sender, task.price)
            self.touched[task_id] = True

        if self._run(sender, "reclaim", [task_id], 0, model):
            assert self.tasks[task_id].requester == sender

    # -- rules -------------------------------------------------------------------

    @initialize(
        who=ANYONE,
        price=PRICES,
        validators=VALIDATORS,
        lease=LEASES,
        window=WINDOWS,
        count=BATCH,
        rejecting=st.booleans(),
    )
    def first_tasks(
        self, who: int, price: int, validators: int, lease: int, window: int, count: int, rejecting: bool
    ) -> None:
        if rejecting:
            self.set_rejecting(True)
        self._create(self.parties[who], price, validators, lease, window, count)

    @rule(who=ANYONE, price=PRICES, validators=VALIDATORS, lease=LEASES, window=WINDOWS, count=BATCH)
    def create(self, who: int, price: int, validators: int, lease: int, window: int, count: int) -> None:
        self._create(self.parties[who], price, validators, lease, window, count)

    @precondition(lambda self: self.tasks)
    @rule(pick=TASK, who=AS_CLAIMER, then=st.sampled_from(["nothing", "claim again", "requester cancels"]))
    def claim(self, pick: int, who: int, then: str) -> None:
        """A claim, sometimes followed at once by a call that a fresh seat must block."""
        task_id = self._task_id(pick)
        worker = self._who(who, task_id)
        if not self._claim(task_id, worker) or then == "nothing":
            return
        if then == "claim again":
            self._claim(task_id, worker)
        else:
            self._cancel(task_id, self.tasks[task_id].requester)

    @precondition(lambda self: self.tasks)
    @rule(pick=TASK, who=AS_WORKER, digest=DIGESTS)
    def submit(self, pick: int, who: int, digest: bytes) -> None:
        task_id = self._task_id(pick)
        self._submit(task_id, self._who(who, task_id), digest)

    @precondition(lambda self: self.tasks)
    @rule(pick=TASK, who=AS_CLAIMER, digest=DIGESTS)
    def claim_and_submit(self, pick: int, who: int, digest: bytes) -> None:
        """A worker doing its job at once: gets random runs to settle tasks often."""
        task_id = self._task_id(pick)
        worker = self._who(who, task_id)
        if self._claim(task_id, worker):
            self._submit(task_id, worker, digest)

    @precondition(lambda self: self.tasks)
    @rule(pick=TASK, digests=st.lists(DIGESTS, min_size=3, max_size=3))
    def crowd(self, pick: int, digests: list[bytes]) -> None:
        """Newcomers fill every free seat, then each holder submits: settles multi-seat tasks."""
        task_id = self._task_id(pick)
        task = self.tasks.get(task_id)
        if task is None:
            self._claim(task_id, self.parties[0])
            return
        for _ in range(task.seats.count(None)):
            if not self._claim(task_id, self._who(NEWCOMER, task_id)):
                break
        for digest in digests[: task.validators]:
            if task.status not in LIVE:
                break
            self._submit(task_id, self._who(HOLDER, task_id), digest)

    @precondition(lambda self: self.tasks)
    @rule(pick=TASK, who=AS_WORKER, digest=DIGESTS)
    def report_failure(self, pick: int, who: int, digest: bytes) -> None:
        task_id = self._task_id(pick)
        sender = self._who(who, task_id)

        def model() -> None:
            task = self._live(task_id)
            if self.now > task.deadline:
                raise Refused("DeadlinePassed")
            self._submitter(task, sender)
            task.status = FAILED
            task.seats, task.agreed = [None] * task.validators, None
            self._pay(task.requester, task.price)
            self.touched[task_id] = True

        self._run(sender, "reportFailure", [task_id, digest, CID], 0, model)

    @precondition(lambda self: self.tasks)
    @rule(pick=TASK, who=AS_WORKER)
    def release(self, pick: int, who: int) -> None:
        task_id = self._task_id(pick)
        sender = self._who(who, task_id)

        def model() -> None:
            task = self._live(task_id)
            seat = self._seat_of(task, sender)
            task.seats[seat] = None
            task.seats_taken -= 1
            task.status = OPEN
            self.touched[task_id] = True

        self._run(sender, "release", [task_id], 0, model)

    @precondition(lambda self: self.tasks)
    @rule(pick=TASK, who=AS_REQUESTER)
    def cancel(self, pick: int, who: int) -> None:
        task_id = self._task_id(pick)
        self._cancel(task_id, self._who(who, task_id))

    @precondition(lambda self: self.tasks)
    @rule(pick=TASK, who=AS_REQUESTER)
    def reclaim(self, pick: int, who: int) -> None:
        task_id = self._task_id(pick)
        self._reclaim(task_id, self._who(who, task_id))

    @rule(who=st.one_of(st.just(ACTOR), ANYONE))
    def withdraw(self, who: int) -> None:
        sender = self.parties[who]

        def model() -> None:
            amount = self.owed[sender]
            if amount == 0:
                raise Refused("NothingOwed")
            if sender == self.actor.address and self.rejecting:
                raise Refused("TransferFailed")
            self.owed[sender] = 0
            self.balances[sender] += amount

        self._run(sender, "withdraw", [], 0, model)

    @rule(on=st.booleans())
    def set_rejecting(self, on: bool) -> None:
        self._tick()
        tx_hash = self.actor.functions.setRejecting(on).transact({"from": self.operator, "gas": 100_000})
        receipt = self.w3.eth.get_transaction_receipt(tx_hash)
        self.balances[self.operator] -= int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"])
        self.rejecting = on

    @rule(seconds=st.sampled_from([1, 10, 50, 250, 1000]))
    def travel(self, seconds: int) -> None:
        self._tick(seconds)
        self.tester.mine_blocks()

    @precondition(lambda self: any(t.status in LIVE for t in self.tasks.values()))
    @rule(
        pick=TASK,
        edge=st.integers(min_value=0, max_value=3),
        after=st.booleans(),
        then=st.sampled_from(["claim", "submit", "reclaim", "cancel"]),
        digest=DIGESTS,
    )
    def act_on_an_edge(self, pick: int, edge: int, after: bool, then: str, digest: bytes) -> None:
        """A call landing exactly on (or one second past) a deadline or lease expiry: off-by-ones live there."""
        # Tasks with leases are where the edges matter most, full ones most of all.
        live = [i for i, t in self.tasks.items() if t.status in LIVE]
        seated = [i for i in live if any(self.tasks[i].seats)]
        full = [i for i in seated if self.tasks[i].status == CLAIMED]
        pool = full or seated or live
        task_id = pool[pick % len(pool)]
        task = self.tasks[task_id]
        edges = [s.expiry for s in task.seats if s is not None] + [task.deadline]
        target = edges[edge % len(edges)] + int(after)
        if target - 1 > self.now:
            self._tick(target - 1 - self.now)
            self.tester.mine_blocks()
        if then == "claim":
            self._claim(task_id, self._who(NEWCOMER, task_id))
        elif then == "submit":
            self._submit(task_id, self._who(HOLDER, task_id), digest)
        elif then == "reclaim":
            self._reclaim(task_id, task.requester)
        else:
            self._cancel(task_id, task.requester)

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def escrow_is_accounted_for(self) -> None:
        live = sum(t.price for t in self.tasks.values() if t.status in LIVE)
        held = int(self.w3.eth.get_balance(self.market.address))
        assert held == live + sum(self.owed.values())
        assert (
            int(self._view(self.market.functions.owed(self.actor.address))) == self.owed[self.actor.address]
        )

    @invariant()
    def everyone_was_paid_exactly_what_the_model_says(self) -> None:
        for party, expected in self.balances.items():
            assert int(self.w3.eth.get_balance(party)) == expected, party

    @invariant()
    def touched_tasks_match_the_model(self) -> None:
        for task_id, seats in self.touched.items():
            self._check_task(task_id, seats)
        self.touched.clear()

    def teardown(self) -> None:
        assert int(self._view(self.market.functions.taskCount())) == len(self.tasks)
        for task_id, task in self.tasks.items():
            self._check_task(task_id, seats=task.status in LIVE)
        for party in self.parties:
            assert int(self._view(self.market.functions.owed(party))) == self.owed[party]

    def _view(self, fn: Any) -> Any:
        # An explicit sender spares web3 a round of account lookups per call.
        return fn.call({"from": self.operator})

    def _check_task(self, task_id: int, seats: bool) -> None:
        task = self.tasks[task_id]
        raw = self._view(self.market.functions.getTask(task_id))
        assert list(raw) == [
            task.requester, task.price, task.deadline, 60, task.lease, task.status,
            task.validators, task.seats_taken, task.submitted,
        ]  # fmt: skip
        if not seats:
            return
        for i, seat in enumerate(task.seats):
            got = self._view(self.market.functions.getSeat(task_id, i))
            if seat is None:
                assert list(got) == ["0x" + "00" * 20, 0, False, b"\0" * 32]
            else:
                digest = task.agreed if seat.submitted else b"\0" * 32
                assert list(got) == [seat.worker, seat.expiry, seat.submitted, digest]


MarketMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_market_invariants = MarketMachine.TestCase
