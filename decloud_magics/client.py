"""The Python API: submit code to a market, follow its runs, read the ledger.

Everything the magics do is one call here, so it is tested without a kernel.

In[1]: from decloud_magics import Client
In[2]: client = Client()                     # the embedded ``local`` network
In[3]: run = client.submit("total = sum(xs)", inputs={"xs": [1, 2, 3]})
In[4]: run.result().values
Out[4]: {'total': 6}
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .accounting import (
    REQUESTER_GAS_ESTIMATE,
    Budget,
    check_balance,
    check_budget,
    check_max_price,
    parse_budget,
)
from .chain.market import ChainStatus, MarketEvent, TxOutcome
from .connection import Connection, connect
from .errors import DecloudError, RunFailed, UsageError
from .keys import PrivateKey, redact
from .models import EventKind, Resources, RunEvent, Status, utcnow
from .networks import NetworkConfig, get_network
from .recovery import Wallet, past_result, reattach, refund_all, wallet
from .run import Result, Run
from .settlement import end_without_result, fetch_result, settle
from .units import format_amount, parse_amount

if TYPE_CHECKING:
    import pandas as pd

    from .ledger import Ledger

log = logging.getLogger("decloud.client")

DEFAULT_PRICE = "0.0001ether"
#: Time a task may wait for a worker before its deadline, on top of its own timeout.
DEFAULT_QUEUE_WINDOW_S = 120
#: Extra lease beyond the task's timeout: fetching, storing and settling take a moment.
LEASE_GRACE_S = 15


class Client:
    """A connection to one market plus the local ledger.

    Parameters
    ----------
    network : a network name (``local``, ``devnet``, or one you added) or a config.
    ledger : where runs are recorded; the default ledger file when None.
    key : the requester's key for networks other than ``local``; read from the
        environment, a ``.env`` file or a keystore when None.
    connection : an already opened connection (a private embedded chain in
        tests, a custom store); ``network`` then only names it.
    """

    def __init__(
        self,
        network: str | NetworkConfig = "local",
        *,
        ledger: Ledger | None = None,
        key: PrivateKey | None = None,
        default_price: str | int = DEFAULT_PRICE,
        queue_window_s: int = DEFAULT_QUEUE_WINDOW_S,
        max_price: str | int | None = None,
        connection: Connection | None = None,
    ) -> None:
        from .ledger import Ledger

        self.config = network if isinstance(network, NetworkConfig) else get_network(network)
        self.ledger = ledger or Ledger()
        self.default_price_wei = parse_amount(default_price)
        self.max_price_wei = None if max_price is None else parse_amount(max_price)
        self.queue_window_s = queue_window_s
        self.conn: Connection = connection or connect(self.config, key)
        self.runs: dict[str, Run] = {}
        self._by_task: dict[int, Run] = {}
        self._orphans: dict[int, list[MarketEvent]] = defaultdict(list)
        # "running" said about a task whose create call has not returned yet (a worker
        # that needs no claim starts at once); bounded, since a shared channel carries anyone's tasks
        self._early_running: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._live: queue.SimpleQueue[tuple[int, str, dict[str, Any]]] = queue.SimpleQueue()
        self._lock = threading.RLock()
        self._closed = threading.Event()
        self._next_deadline_check = 0.0
        self._seen_logs: set[tuple[str, int]] = set()
        self._follower = self.conn.market.follow(from_block=self.conn.market.block_number())
        self._unsubscribe = self.conn.channel.subscribe(self._on_live)
        self._watcher = threading.Thread(target=self._watch, name="decloud-client-watcher", daemon=True)
        self._watcher.start()

    @property
    def network(self) -> str:
        return self.config.name

    @property
    def account(self) -> str:
        return self.conn.market.account

    # -- submitting ------------------------------------------------------------

    def submit(
        self,
        code: str,
        inputs: Mapping[str, Any] | None = None,
        outputs: Sequence[str] | None = None,
        *,
        namespace: Mapping[str, Any] | None = None,
        input_names: Sequence[str] | None = None,
        price: str | int | None = None,
        timeout: int = 60,
        resources: Resources = Resources(),
        validators: int = 1,
        name: str | None = None,
        trust_pickle: bool = False,
        queue_window_s: int | None = None,
        max_input_bytes: int | None = None,
        max_price: str | int | None = None,
    ) -> Run:
        """Package ``code`` with ``inputs``, store it, and open a paid task for it.

        ``inputs`` maps names to values that are all sent. ``namespace`` is where
        the cell's free variables are looked up (a notebook passes its own);
        ``input_names`` overrides that choice.
        ``outputs`` names what to bring back; by default every name the cell assigns.
        Errors before the task is opened (syntax, unserializable input) cost nothing.
        """
        if timeout <= 0:
            raise UsageError(f"--timeout must be a positive number of seconds, not {timeout}.")
        price_wei = self.default_price_wei if price is None else parse_amount(price)
        run = self._new_run(code, price_wei, outputs, name=name, trust_pickle=trust_pickle, timeout=timeout,
                            validators=validators)  # fmt: skip
        try:
            self.preflight(price_wei, max_price)
            self._package(run, code, inputs, outputs, namespace=namespace, input_names=input_names,
                          max_input_bytes=max_input_bytes)  # fmt: skip
            market = self.conn.market
            deadline = market.chain_time() + timeout + (queue_window_s or self.queue_window_s)
            task_id, outcome = market.create_task(
                run.input_cid or "",
                price_wei,
                timeout=int(timeout),
                lease=int(timeout) + LEASE_GRACE_S,
                deadline=deadline,
                validators=validators,
                resources=resources,
            )
        except DecloudError as exc:
            self._fail_before_chain(run, exc)
            raise
        self._opened(run, task_id, outcome, deadline, validators, gas=(outcome.gas_used, outcome.gas_cost_wei))
        return run

    def map(
        self,
        code: str,
        inputs: Sequence[Mapping[str, Any]],
        outputs: Sequence[str] | None = None,
        **options: Any,
    ) -> list[Run]:
        """One run of ``code`` per element of ``inputs``, opened ``batch`` tasks per transaction.

        The same options as ``submit`` (price, timeout, resources, validators,
        name, trust_pickle, ...) plus ``batch`` (default 100). One base fee per
        batch instead of per task; see ``decloud_magics.batch``.

        In[1]: runs = client.map("y = x * 2", [{"x": i} for i in range(100)], outputs=["y"])
        In[2]: [r.result().values["y"] for r in runs][:3]
        Out[2]: [0, 2, 4]
        """
        from .batch import submit_many

        return submit_many(self, code, inputs, outputs, **options)

    # -- the steps of a submission (shared with batch.submit_many) ---------------

    def _new_run(self, code: str, price_wei: int, outputs: Sequence[str] | None, *, name: str | None,
                 trust_pickle: bool, timeout: int, validators: int) -> Run:  # fmt: skip
        run = Run(self, uuid.uuid4().hex[:12], name=name, network=self.network, price_wei=price_wei,
                  trust_pickle=trust_pickle, outputs=tuple(outputs or ()))  # fmt: skip
        self._record_new(run, code, timeout=timeout, validators=validators)
        with self._lock:
            self.runs[run.id] = run
        return run

    def _package(self, run: Run, code: str, inputs: Mapping[str, Any] | None, outputs: Sequence[str] | None, *,
                 namespace: Mapping[str, Any] | None = None, input_names: Sequence[str] | None = None,
                 max_input_bytes: int | None = None) -> None:  # fmt: skip
        """Build the task package and store it: ``run.input_cid``. Nothing is paid yet."""
        from .analysis import cell_names
        from .package import build_task_package

        scope = {**(namespace or {}), **(inputs or {})}
        names = list(input_names) if input_names is not None else None
        if inputs and names is None and namespace is None:
            names = list(inputs)
        elif inputs and names is not None:
            names += [n for n in inputs if n not in names]
        limits = {} if max_input_bytes is None else {"max_input_bytes": max_input_bytes}
        task, package = build_task_package(
            code, scope, inputs=names, outputs=outputs, trust_pickle=run.trust_pickle, name=run.name, **limits
        )
        run.wanted = tuple(task.outputs) if task.outputs is not None else cell_names(code).assigns
        run.input_cid = self.conn.store.put(package)

    def _opened(self, run: Run, task_id: int, outcome: TxOutcome, deadline: int, validators: int, *,
                gas: tuple[int, int]) -> None:  # fmt: skip
        """The task is on chain: record it, say so, and follow it. ``gas`` is this run's share."""
        market = self.conn.market
        run.task_id = task_id
        run.validators = validators
        run.deadline = deadline
        run.gas_used += gas[0]
        run.gas_cost_wei += gas[1]
        self.ledger.update_run(
            run.id, task_id=task_id, input_cid=run.input_cid, contract=market.address, outputs=list(run.wanted),
            deadline=datetime.fromtimestamp(deadline, timezone.utc),
        )  # fmt: skip
        run._emit(
            EventKind.CREATED,
            message=f"task {task_id} created, {format_amount(run.price_wei, self.config.symbol)} in escrow",
            block=outcome.block,
            tx_hash=outcome.tx_hash,
            data={"task_id": task_id, "input_cid": run.input_cid, "gas": gas[0]},
        )
        # a hint for workers that listen: the task is on chain, look now rather than at the next poll
        self.conn.channel.publish(task_id, "created", {})
        with self._lock:
            self._by_task[task_id] = run
            early = self._orphans.pop(task_id, [])
            said = self._early_running.pop(task_id, None)
        for event in early:
            self._on_chain_event(event)
        if said is not None:
            self._on_live_message(task_id, "running", said)
        self.conn.wake.set()

    # -- spending rules ----------------------------------------------------------

    @property
    def budget(self) -> Budget | None:
        return Budget.from_setting(self.ledger.get_setting("budget"))

    def set_budget(self, spec: str | Budget | None) -> Budget | None:
        """``"0.05/h"``, ``"1.0"`` or ``"off"``: kept in the ledger, so every kernel sees it."""
        budget = parse_budget(spec) if isinstance(spec, str) else spec
        self.ledger.set_setting("budget", budget.to_setting() if budget else None)
        return budget

    def spent_wei(self, budget: Budget | None = None) -> int:
        budget = budget or self.budget
        since = budget.window_start(utcnow()) if budget else None
        return self.ledger.spent_wei(since=since)

    def preflight(self, price_wei: int, max_price: str | int | None = None, count: int = 1) -> None:
        """Refuse, before anything is sent, a run over the max price, the budget or the wallet.

        ``count`` runs at ``price_wei`` each are checked together (a ``map``).
        """
        symbol = self.config.symbol
        limit = self.max_price_wei if max_price is None else parse_amount(max_price)
        check_max_price(price_wei, limit, symbol)
        gas_wei = REQUESTER_GAS_ESTIMATE * self.conn.market.gas_price() * count
        budget = self.budget
        if budget is not None:
            check_budget(budget, self.spent_wei(budget), price_wei * count, gas_wei, symbol)
        check_balance(self.conn.market.balance(), price_wei * count, gas_wei, self.account, symbol)

    def wallet(self) -> Wallet:
        """Address, balance, escrow locked in open tasks, and what the contract owes us."""
        return wallet(self)

    def refund(self) -> tuple[int, list[str]]:
        """Reclaim every escrow that can come back; returns (wei, run ids)."""
        return refund_all(self)

    def reattach(self) -> list[Run]:
        """Follow again the runs the ledger shows in flight on this network (after a restart)."""
        return reattach(self)

    def past_result(self, run_id: str) -> Result:
        """A finished run's result, fetched and verified again (never from a cache)."""
        return past_result(self, run_id)[1]

    def events(self, run_id: str) -> pd.DataFrame:
        return self.ledger.events_frame(self.ledger.find_run(run_id).run_id)

    def summary(self) -> pd.DataFrame:
        return self.ledger.summary_frame()

    def _adopt(self, run: Run) -> None:
        with self._lock:
            self.runs[run.id] = run
            if run.task_id is not None:
                self._by_task[run.task_id] = run

    def cancel(self, run: Run) -> int:
        """Cancel an open task nobody holds; the escrow comes back. Returns the refund in wei."""
        if run.task_id is None or run.done():
            raise UsageError(f"Run {run.id} is {run.status.value}: only an open run can be cancelled.")
        outcome = self.conn.market.cancel(run.task_id)
        self._add_gas(run, outcome.gas_used, outcome.gas_cost_wei)
        for event in outcome.events:
            self._on_chain_event(event)
        return run.refunded_wei

    def get_run(self, run_id: str) -> Run:
        with self._lock:
            matches = [r for rid, r in self.runs.items() if rid.startswith(run_id)]
        if len(matches) != 1:
            what = "no run" if not matches else "more than one run"
            raise UsageError(f"{what.capitalize()} of this session starts with '{run_id}': give more of its id.")
        return matches[0]

    def history(self, **filters: Any) -> pd.DataFrame:
        """Every run this ledger knows, newest first (see ``Ledger.history_frame``)."""
        return self.ledger.history_frame(**filters)

    def close(self) -> None:
        self._closed.set()
        self.conn.wake.set()
        self._watcher.join(timeout=5)
        self._unsubscribe()
        self._follower.close()
        self.conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- following -------------------------------------------------------------

    def _on_live(self, task_id: int, kind: str, data: dict[str, Any]) -> None:
        self._live.put((task_id, kind, data))
        self.conn.wake.set()

    def _watch(self) -> None:
        """One loop for all runs: chain logs first, then live messages, then deadlines."""
        while not self._closed.is_set():
            self.conn.wake.clear()
            last_poll = time.monotonic()
            # Take live messages before reading the chain: a worker says "running"
            # only after its claim is mined, so the claim is then already readable.
            live = []
            while True:
                try:
                    live.append(self._live.get_nowait())
                except queue.Empty:
                    break
            try:
                for event in self._follower.poll():
                    self._on_chain_event(event)
                for task_id, kind, data in live:
                    self._on_live_message(task_id, kind, data)
                self._check_deadlines()
            except DecloudError as exc:
                log.warning("decloud watcher: %s", redact(str(exc), self.conn.key))
            except Exception:  # never let the watcher die: runs would hang
                log.exception("decloud watcher error")
            self.conn.wake.wait(self.conn.market.poll_interval)
            # live messages wake us, and anyone may send them: still look at most every 5 ms
            time.sleep(max(0.0, last_poll + 0.005 - time.monotonic()))

    def _on_chain_event(self, event: MarketEvent) -> None:
        task_id = event.task_id
        if task_id is None:
            return
        with self._lock:
            run = self._by_task.get(task_id)
            if run is None:
                if event.name != "TaskCreated":
                    self._orphans[task_id].append(event)  # our create call has not returned yet
                return
            # a re-attach replays past logs while the follower already sees new ones: handle each once
            key = (event.tx_hash, event.log_index)
            if key in self._seen_logs:
                return
            self._seen_logs.add(key)
        where = {"block": event.block, "tx_hash": event.tx_hash}
        a = event.args
        if event.name == "TaskClaimed":
            self._order_placed(run, str(a["worker"]), f"claimed by {_short(str(a['worker']))}",
                               data={"seat": int(a["seat"]), "lease_expiry": int(a["leaseExpiry"])},
                               claim=True, **where)  # fmt: skip
        elif event.name == "ResultSubmitted":
            run.result_cid = bytes(a["resultCid"]).decode()
            worker = str(a["worker"])
            if run.validators == 1:
                # The chain names the worker for good; when nobody claimed and the channel
                # said nothing, this is the first sign of it.
                unseen = run.status == Status.OPEN
                self._order_placed(run, worker, f"taken by {_short(worker)}", **where)
                if unseen:
                    run._emit(EventKind.RUNNING, message="ran in the worker's sandbox", worker=worker)
        elif event.name == "TaskCompleted":
            self._settle(run, bytes(a["resultDigest"]), where, paid=int(a["paidPerWorker"]))
        elif event.name == "TaskFailed":
            run.result_cid = bytes(a["resultCid"]).decode()
            run.refunded_wei = int(a["refund"])
            self._settle(run, bytes(a["resultDigest"]), where, paid=0)
        elif event.name in ("TaskCancelled", "TaskNotProcessed", "TaskDisputed"):
            self._end_without_result(run, event, where)

    def _order_placed(self, run: Run, worker: str, message: str, data: dict[str, Any] | None = None,
                      claim: bool = False, **where: Any) -> None:  # fmt: skip
        """The run's worker is known: a stage when it is the first, or a claim that took
        the task over; otherwise (the chain confirming what the live channel said) only the name."""
        takeover = claim and run.worker is not None and run.worker.lower() != worker.lower()
        if run.status != Status.OPEN and not takeover:
            if (run.worker or "").lower() != worker.lower():
                run.worker = worker
                self.ledger.update_run(run.id, worker=worker)
            return
        run.worker = worker
        self.ledger.update_run(run.id, worker=worker, started_at=utcnow())
        run._emit(EventKind.ORDER_PLACED, message=message, worker=worker, data=data or {}, **where)

    def _on_live_message(self, task_id: int, kind: str, data: dict[str, Any]) -> None:
        with self._lock:
            run = self._by_task.get(task_id)
            if run is None and kind == "running":
                self._early_running[task_id] = data
                while len(self._early_running) > 256:
                    self._early_running.popitem(last=False)
        if run is None or run.done():
            return
        # Anyone can publish on a live channel: take only what the task's own
        # worker says, and only the fields a panel shows (never our timings).
        sender = str(data.get("worker") or "")
        if kind == "running" and run.validators == 1 and run.status == Status.OPEN and sender:
            # A single-validator task needs no claim: the worker's word is the first sign
            # of it, and the chain names the worker for good when the result is settled.
            self._order_placed(run, sender, f"taken by {_short(sender)}")
        if not run.worker or sender.lower() != run.worker.lower():
            return
        data = {"worker": run.worker, "line": str(data.get("line", ""))[:4096]}
        if kind == "running" and run.status == Status.CLAIMED:
            run._emit(EventKind.RUNNING, message="running in the worker's sandbox", data=data)
        elif kind == "stdout":
            run._emit(EventKind.STDOUT, message=str(data.get("line", "")), data=data)

    def _check_deadlines(self) -> None:
        """Past its deadline with no result, a task is not processed: take the escrow back."""
        with self._lock:
            waiting = [r for r in self._by_task.values() if not r.done() and r.deadline is not None]
        if not waiting or time.monotonic() < self._next_deadline_check:
            return
        self._next_deadline_check = time.monotonic() + 0.5
        # Deadlines are judged by the chain's clock, which may run ahead of ours.
        now = max(time.time(), self.conn.market.chain_time())
        for run in waiting:
            if run.deadline is not None and now > run.deadline + 1 and run.task_id is not None:
                try:
                    task = self.conn.market.get_task(run.task_id)
                    if task.status in (ChainStatus.OPEN, ChainStatus.CLAIMED):
                        outcome = self.conn.market.reclaim(run.task_id)
                        self._add_gas(run, outcome.gas_used, outcome.gas_cost_wei)
                        for event in outcome.events:
                            self._on_chain_event(event)
                except DecloudError as exc:
                    log.debug("reclaim of task %s not possible yet: %s", run.task_id, exc)

    # -- endings ---------------------------------------------------------------

    def _settle(self, run: Run, digest: bytes, where: dict[str, Any], paid: int) -> None:
        settle(self, run, digest, where, paid)

    def _end_without_result(self, run: Run, event: MarketEvent, where: dict[str, Any]) -> None:
        end_without_result(self, run, event, where)

    def load_result(self, run: Run, cid: str | None, digest: bytes) -> Result:
        """Read a result from the store and verify it; never trusts a cache."""
        return self.fetch_result(run.id, cid, digest, trust_pickle=run.trust_pickle, wanted=run.wanted)

    def fetch_result(self, run_id: str, cid: str | None, digest: bytes, *, trust_pickle: bool = False,
                     wanted: Sequence[str] | None = None) -> Result:  # fmt: skip
        """Fetch by CID and check it against the chain's digest (see ``settlement.fetch_result``)."""
        return fetch_result(self.conn.store, run_id, cid, digest, trust_pickle=trust_pickle, wanted=wanted)

    # -- the ledger --------------------------------------------------------------

    def _record_new(self, run: Run, code: str, *, timeout: int, validators: int) -> None:
        from .ledger import RunRecord

        self.ledger.record_run(
            RunRecord(
                run_id=run.id,
                name=run.name,
                network=self.network,
                requester=self.account,
                status=Status.CREATED.value,
                submitted_at=utcnow(),
                price_wei=run.price_wei,
                gas_used=0,
                gas_cost_wei=0,
                cell_hash=hashlib.sha256(code.encode()).hexdigest()[:16],
                code=code,
                outputs=list(run.outputs),
                options={"timeout": timeout, "trust_pickle": run.trust_pickle, "pid": os.getpid()},
                validators=validators,
            )
        )

    def _fail_before_chain(self, run: Run, exc: Exception) -> None:
        message = redact(str(exc), self.conn.key)
        self.ledger.update_run(run.id, status=Status.FAILED.value, error=message, completed_at=utcnow())
        run._finish(EventKind.FAILED, failure=RunFailed(message), message=message, data={"reason": "before_chain"})

    def _add_gas(self, run: Run, gas: int, cost: int) -> None:
        run.gas_used += gas
        run.gas_cost_wei += cost
        self.ledger.update_run(run.id, gas_used=run.gas_used, gas_cost_wei=run.gas_cost_wei)

    def _record_event(self, run: Run, event: RunEvent) -> None:
        if event.kind == EventKind.STDOUT:
            return  # stdout lines are shown live and kept in the result, not in the ledger
        fields: dict[str, Any] = {"status": run.status.value, "gas_used": run.gas_used,
                                  "gas_cost_wei": run.gas_cost_wei}  # fmt: skip
        if event.is_final:
            fields["completed_at"] = event.at
        self.ledger.add_event(event, **fields)

    def _report_callback_error(self, run: Run, exc: Exception) -> None:
        log.warning("a callback of run %s raised %s: %s", run.id, type(exc).__name__, exc)


def _short(address: str | None) -> str:
    return f"{address[:6]}…{address[-4:]}" if address else "?"
