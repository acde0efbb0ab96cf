"""The embedded network's workers: a few ``Worker`` threads on the in-process chain.

They share the notebook's process only for convenience; like any worker they
reach the client solely through the market, the store and the live channel.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..chain.embedded import EmbeddedChain
from ..channel import LiveChannel
from ..store.base import Store
from .service import Worker, WorkerPolicy
from .sharing import TaskBoard

#: Two cores here: more sandboxes than that only queue on the CPU.
DEFAULT_WORKERS = 3


def _turns(index: int, count: int) -> Callable[[int], float]:
    """Task n is first offered to worker n % count; the others wait a moment before they step in."""

    def delay(task_id: int) -> float:
        return 0.0 if task_id % count == index - 1 else 0.75

    return delay


class LocalWorkerPool:
    """Starts ``count`` workers on accounts 1..count of the embedded chain."""

    def __init__(
        self,
        chain: EmbeddedChain,
        store: Store,
        channel: LiveChannel,
        count: int = DEFAULT_WORKERS,
        policy: WorkerPolicy | None = None,
    ) -> None:
        self.workers: list[Worker] = []
        # One operator's threads: they split single-validator tasks in memory, not by claims on chain.
        board = TaskBoard()
        for index in range(1, count + 1):
            wake = threading.Event()
            chain.add_listener(wake)
            worker = Worker(
                chain.market(index),
                store,
                channel=channel,
                policy=policy or WorkerPolicy(),
                name=f"local-{index}",
                wake=wake,
                stagger=_turns(index, count),
                board=board,
            )
            self.workers.append(worker)
        self._chain = chain

    def start(self) -> LocalWorkerPool:
        for worker in self.workers:
            worker.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        for worker in self.workers:
            worker.stop(timeout=timeout)
            self._chain.remove_listener(worker.wake)
