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
from .chain.records import MarketEvent, TxOutcome
from .connection import Connection, connect
from .errors import DecloudError, RunFailed, UsageError
from .following import Following
from .keys import PrivateKey, redact
from .models import DEFAULT_RESOURCES, EventKind, Resources, RunEvent, Status, utcnow
from .networks import NetworkConfig, get_network
from .recovery import Wallet, past_result, reattach, refund_all, wallet
from .run import Result, Run
from .settlement import end_without_result, fetch_result, settle
from .units import format_amount, parse_amount

if TYPE_CHECKING:
    import pandas as pd
    from typing_extensions import Self

    from .buffers import Pieces
    from .ledger import Ledger

log = logging.getLogger("decloud.client")

DEFAULT_PRICE = "0.0001ether"
#: Time a task may wait for a worker before its deadline, on top of its own timeout.
DEFAULT_QUEUE_WINDOW_S = 120
#: Extra lease beyond the task's timeout: fetching, storing and settling take a moment.
LEASE_GRACE_S = 15


class Client(Following):
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
        resources: Resources = DEFAULT_RESOURCES,
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
        price_wei = self._price_wei(price, timeout)
        run = self._new_run(code, price_wei, outputs, name=name, trust_pickle=trust_pickle, timeout=timeout,
                            validators=validators)  # fmt: skip
        try:
            self.preflight(price_wei, max_price)
            self._package(run, code, inputs, outputs, namespace=namespace, input_names=input_names,
                          max_input_bytes=max_input_bytes)  # fmt: skip
            terms = self._task_terms(timeout, queue_window_s)
            task_id, outcome = self.conn.market.create_task(
                run.input_cid or "", price_wei, **terms, validators=validators, resources=resources
            )
        except DecloudError as exc:
            self._fail_before_chain(run, exc)
            raise
        self._opened(
            run, task_id, outcome, terms["deadline"], validators, gas=(outcome.gas_used, outcome.gas_cost_wei)
        )
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

    def _price_wei(self, price: str | int | None, timeout: int) -> int:
        """The price in wei, once the timeout is known to be sane."""
        if timeout <= 0:
            raise UsageError(f"--timeout must be a positive number of seconds, not {timeout}.")
        return self.default_price_wei if price is None else parse_amount(price)

    def _task_terms(self, timeout: int, queue_window_s: int | None) -> dict[str, int]:
        """Timeout, lease and deadline of a task opened now: it may wait ``queue_window_s`` for a worker."""
        deadline = self.conn.market.chain_time() + timeout + (queue_window_s or self.queue_window_s)
        return {"timeout": int(timeout), "lease": int(timeout) + LEASE_GRACE_S, "deadline": deadline}

    def _new_run(self, code: str, price_wei: int, outputs: Sequence[str] | None, *, name: str | None,
                 trust_pickle: bool, timeout: int, validators: int) -> Run:  # fmt: skip
        run = Run(self, uuid.uuid4().hex[:12], name=name, network=self.network, price_wei=price_wei,
                  trust_pickle=trust_pickle, outputs=tuple(outputs or ()))  # fmt: skip
        self._record_new(run, code, timeout=timeout, validators=validators)
        with self._lock:
            self.runs[run.id] = run
        return run

    def _package(self, run: Run, code: str, inputs: Mapping[str, Any] | None, outputs: Sequence[str] | None,
                 *, namespace: Mapping[str, Any] | None = None, input_names: Sequence[str] | None = None,
                 max_input_bytes: int | None = None) -> None:  # fmt: skip
        """Build the task package and store it: ``run.input_cid``. Nothing is paid yet."""
        pieces = self._pack(run, code, inputs, outputs, namespace=namespace, input_names=input_names,
                            max_input_bytes=max_input_bytes)  # fmt: skip
        run.input_cid = self.conn.store.put(pieces)  # written piece by piece: the values are copied once

    def _pack(self, run: Run, code: str, inputs: Mapping[str, Any] | None, outputs: Sequence[str] | None,
              *, namespace: Mapping[str, Any] | None = None, input_names: Sequence[str] | None = None,
              max_input_bytes: int | None = None) -> Pieces:  # fmt: skip
        """The task package of ``run``, as pieces ready for the store (``run.wanted`` is set)."""
        from .analysis import cell_names
        from .package import task_pieces

        scope = {**(namespace or {}), **(inputs or {})}
        names = list(input_names) if input_names is not None else None
        if inputs and names is None and namespace is None:
            names = list(inputs)
        elif inputs and names is not None:
            names += [n for n in inputs if n not in names]
        limits = {} if max_input_bytes is None else {"max_input_bytes": max_input_bytes}
        wanted, pieces = task_pieces(
            code, scope, inputs=names, outputs=outputs, trust_pickle=run.trust_pickle, name=run.name, **limits
        )
        run.wanted = wanted if wanted is not None else cell_names(code).assigns
        return pieces

    def _opened(self, run: Run, task_id: int, outcome: TxOutcome, deadline: int, validators: int, *,
                gas: tuple[int, int], hint: bool = True) -> None:  # fmt: skip
        """The task is on chain: record it, say so, and follow it. ``gas`` is this run's share;
        ``hint`` tells listening workers to look now (a batch sends one for all its tasks)."""
        market = self.conn.market
        run.task_id = task_id
        run.validators = validators
        run.deadline = deadline
        run.gas_used += gas[0]
        run.gas_cost_wei += gas[1]
        self.ledger.update_run(
            run.id, task_id=task_id, input_cid=run.input_cid, contract=market.address,
            outputs=list(run.wanted), deadline=datetime.fromtimestamp(deadline, timezone.utc),
        )  # fmt: skip
        run._emit(
            EventKind.CREATED,
            message=f"task {task_id} created, {format_amount(run.price_wei, self.config.symbol)} in escrow",
            block=outcome.block,
            tx_hash=outcome.tx_hash,
            data={"task_id": task_id, "input_cid": run.input_cid, "gas": gas[0]},
        )
        if hint and not self.conn.blocks_pushed():
            # for workers that listen: the task is on chain, look now rather than at the next poll
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
            raise UsageError(
                f"{what.capitalize()} of this session starts with '{run_id}': give more of its id."
            )
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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        from .ledger_rows import RunRecord

        self.ledger.record_run(
            RunRecord(
                run_id=run.id,
                name=run.name,
                network=self.network,
                requester=self.account,
                status=Status.CREATED,
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
        run._finish(
            EventKind.FAILED, failure=RunFailed(message), message=message, data={"reason": "before_chain"}
        )

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
