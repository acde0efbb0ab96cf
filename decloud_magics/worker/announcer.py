"""What a worker says on the live channel while a task runs, once the task is its own.

"running" goes out once a task has run for the channel's ``announce_after``
(at once in process; a quarter second over IPFS pubsub, where each message
loads the node): a task that ends sooner is settled on chain about as soon,
and the requester learns from the settlement that it ran. The lines a task
prints before then are said with its "running", in order.
"""

from __future__ import annotations

import threading

from ..channel import LiveChannel


class Announcer:
    """A task's "running" and stdout lines on the live channel, in that order, from the moment it is ours."""

    def __init__(self, channel: LiveChannel, task_id: int, worker: str) -> None:
        self._channel, self._task_id, self._worker = channel, task_id, worker
        self._grace = channel.announce_after
        self._lock = threading.Lock()
        self._held: list[str] | None = []  # lines said before the task was announced; None once it is
        self._closed = False
        self._timer: threading.Timer | None = None

    def open(self) -> None:
        """The task is ours: announce it once it has run for the channel's ``announce_after``."""
        if self._grace <= 0:
            self._announce()
            return
        with self._lock:
            if self._closed:
                return
            self._timer = threading.Timer(self._grace, self._announce)
            self._timer.daemon = True
            self._timer.start()

    def close(self) -> None:
        """The task ended: what was not said yet travels in its result instead."""
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()

    def line(self, line: str) -> None:
        with self._lock:
            if self._held is not None:
                self._held.append(line)
            elif not self._closed:
                self._publish(line)

    def _announce(self) -> None:
        with self._lock:
            if self._closed or self._held is None:
                return
            self._channel.publish(self._task_id, "running", {"worker": self._worker})
            for line in self._held:
                self._publish(line)
            self._held = None

    def _publish(self, line: str) -> None:
        self._channel.publish(self._task_id, "stdout", {"line": line, "worker": self._worker})
