"""What a worker says on the live channel while a task runs, once the task is its own."""

from __future__ import annotations

import threading

from ..channel import LiveChannel


class Announcer:
    """A task's "running" and stdout lines on the live channel, in that order, from the moment it is ours."""

    def __init__(self, channel: LiveChannel, task_id: int, worker: str) -> None:
        self._channel, self._task_id, self._worker = channel, task_id, worker
        self._lock = threading.Lock()
        self._held: list[str] | None = []  # lines said before the task was ours; None once open

    def open(self) -> None:
        with self._lock:
            self._channel.publish(self._task_id, "running", {"worker": self._worker})
            for line in self._held or ():
                self._publish(line)
            self._held = None

    def line(self, line: str) -> None:
        with self._lock:
            if self._held is not None:
                self._held.append(line)
            else:
                self._publish(line)

    def _publish(self, line: str) -> None:
        self._channel.publish(self._task_id, "stdout", {"line": line, "worker": self._worker})
