"""How a client follows its runs: chain logs, live-channel messages and deadlines, in one thread.

A mixin of ``Client``: the chain's logs decide every stage that costs money;
the live channel only adds what happens between them ("running", stdout lines)
and hints that something is worth a look now rather than at the next poll.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from .chain.records import ChainStatus, MarketEvent
from .errors import DecloudError
from .keys import redact
from .models import EventKind, Status, utcnow
from .panel import short_address as _short

if TYPE_CHECKING:
    from .connection import Connection
    from .ledger import Ledger
    from .run import Run

log = logging.getLogger("decloud.client")


class Following:
    """The watcher thread's side of ``Client``."""

    conn: Connection
    ledger: Ledger
    _by_task: dict[int, Run]
    _orphans: dict[int, list[MarketEvent]]
    _early_running: OrderedDict[int, dict[str, Any]]
    _live: queue.SimpleQueue[tuple[int, str, dict[str, Any]]]
    _lock: threading.RLock
    _closed: threading.Event
    _next_deadline_check: float
    _seen_logs: set[tuple[str, int]]
    _follower: Any

    if TYPE_CHECKING:  # provided by Client; declared here for the type checker only

        def _settle(self, run: Run, digest: bytes, where: dict[str, Any], paid: int) -> None: ...

        def _end_without_result(self, run: Run, event: MarketEvent, where: dict[str, Any]) -> None: ...

        def _add_gas(self, run: Run, gas: int, cost: int) -> None: ...

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
        where: dict[str, Any] = {"block": event.block, "tx_hash": event.tx_hash}
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
                self._order_placed(run, worker, f"taken by {_short(worker)}", **where)
            if run.status == Status.CLAIMED:
                # A worker announces only a task that runs a while (``Announcer``), and the
                # channel may lose what it says: a result proves the task ran.
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
