"""How one operator's workers split single-validator tasks without claiming each one.

A claim on chain costs a transaction; it buys a worker exclusivity against
workers it does not know. Workers of one operator know each other, so they
split the tasks among themselves instead: threads of one process through a
``TaskBoard`` in memory, processes (on one machine or several) by a ``Share``
of the task ids. The contract still decides who is paid: a split is only a way
not to run a task twice.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Share:
    """Worker ``index`` of ``count`` (1-based) serves the task ids with ``id % count == index - 1`` first.

    It runs its own tasks without a claim, and claims one only if it is still
    running after ``claim_after`` seconds. The others take (claim) a task of its
    share only when nobody claimed it within ``steal_after`` seconds: a busy or
    dead worker does not hold its share hostage, and a long task is not run twice.
    """

    index: int
    count: int
    claim_after: float = 1.0
    steal_after: float = 3.0

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.count:
            raise ValueError(
                f"a share is INDEX/COUNT with 1 <= INDEX <= COUNT, not {self.index}/{self.count}"
            )
        if self.claim_after >= self.steal_after:
            raise ValueError("a worker must claim its own long task before the others may take it")

    @classmethod
    def parse(cls, text: str) -> Share:
        index, _, count = text.partition("/")
        try:
            return cls(int(index), int(count))
        except ValueError as exc:
            raise ValueError(f"--share takes INDEX/COUNT such as 2/4, not {text!r}: {exc}") from None

    def owns(self, task_id: int) -> bool:
        return task_id % self.count == self.index - 1


class TaskBoard:
    """Which tasks the workers of one operator have taken, kept in memory."""

    def __init__(self) -> None:
        self._taken: set[int] = set()
        self._lock = threading.Lock()

    def take(self, task_id: int) -> bool:
        with self._lock:
            if task_id in self._taken:
                return False
            self._taken.add(task_id)
            return True

    def give_back(self, task_id: int) -> None:
        with self._lock:
            self._taken.discard(task_id)

    def forget(self, task_id: int) -> None:
        """A settled task: nothing left to split."""
        self.give_back(task_id)
