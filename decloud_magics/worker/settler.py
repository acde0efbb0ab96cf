"""Results go to the chain from one thread per worker, many per transaction when they queue up.

A worker's slot is free again as soon as its result is stored: the next task
need not wait for the previous one's transaction to be mined. While one
settlement is in flight the results finished meanwhile wait, and go together
in one ``submitResults`` (one base fee, one payout): a busy worker batches
itself, an idle one sends each result at once. Failure reports and seats of
multi-validator tasks are sent one by one, as they are rare and pay others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..chain.market import Market
from ..errors import DecloudError

log = logging.getLogger("decloud.worker")

#: Results in one transaction at most: a block's gas limit and a bounded revert cost.
MAX_BATCH = 50


@dataclass(frozen=True)
class Settlement:
    """One result to put on chain."""

    task_id: int
    digest: bytes
    cid: str
    validators: int = 1
    failure: str | None = None  # the sandbox cut the task short: report it, the requester is refunded

    @property
    def batchable(self) -> bool:
        return self.failure is None and self.validators == 1


#: Called once per settlement: (what was sent, accepted by the contract, the refusal if not).
Outcome = Callable[[Settlement, bool, str | None], None]


class Settler:
    """Sends a worker's settlements in order, batching what queued up behind a transaction."""

    def __init__(self, market: Market, on_outcome: Outcome, name: str = "worker") -> None:
        self.market = market
        self._on_outcome = on_outcome
        self._queue: list[Settlement] = []
        self._busy = False
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"decloud-{name}-settler", daemon=True)
        self._thread.start()

    def put(self, settlement: Settlement) -> None:
        with self._cond:
            self._queue.append(settlement)
            self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued was sent (or refused); False if ``timeout`` came first."""
        end = time.monotonic() + timeout
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._queue and not self._busy, max(0.0, end - time.monotonic())
            )

    def close(self, timeout: float = 30.0) -> None:
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closed)
                if not self._queue:
                    return
                batch = self._take()
                self._busy = True
            try:
                self._send(batch)
            except Exception:  # the settler outlives anything; the log says what broke
                log.exception("settling %s failed", [s.task_id for s in batch])
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _take(self) -> list[Settlement]:
        """The first settlement, and, when it is batchable, the batchable ones right behind it."""
        n = 1
        if self._queue[0].batchable:
            while n < min(len(self._queue), MAX_BATCH) and self._queue[n].batchable:
                n += 1
        batch, self._queue = self._queue[:n], self._queue[n:]
        return batch

    def _send(self, batch: list[Settlement]) -> None:
        if len(batch) > 1:
            try:
                accepted, _ = self.market.submit_results([(s.task_id, s.digest, s.cid) for s in batch])
            except DecloudError as exc:
                for s in batch:
                    self._on_outcome(s, False, str(exc))
                return
            for s in batch:
                ok = s.task_id in accepted
                self._on_outcome(s, ok, None if ok else "another worker settled the task first")
            return
        (s,) = batch
        try:
            if s.failure is not None:
                self.market.report_failure(s.task_id, s.digest, s.cid, s.validators)
            else:
                self.market.submit_result(s.task_id, s.digest, s.cid, s.validators)
        except DecloudError as exc:
            self._on_outcome(s, False, str(exc))
        else:
            self._on_outcome(s, True, None)
