"""The live channel: what a worker says about a task between chain events.

The chain records the stages that cost money (created, claimed, settled); the
channel carries the rest as it happens: "running", progress notes and stdout
lines. It is best effort: a lost message changes what a panel shows, never
what a run returns. ``LocalChannel`` serves the embedded network in process;
a real network uses a transport both sides reach without a server of ours.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

Listener = Callable[[int, str, dict[str, Any]], None]


class LiveChannel(Protocol):
    #: Seconds a task runs before its worker says "running": a message that costs
    #: the transport something is not worth sending for a task about to end.
    announce_after: float

    def publish(self, task_id: int, kind: str, data: dict[str, Any]) -> None: ...

    def subscribe(self, listener: Listener) -> Callable[[], None]: ...


class LocalChannel:
    """In-process fan-out, one per market, for the embedded network."""

    announce_after = 0.0  # a message is a function call here

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    def publish(self, task_id: int, kind: str, data: dict[str, Any]) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(task_id, kind, data)
            except Exception:  # noqa: BLE001, S110 (a broken listener must not stop a worker)
                pass

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe


class NullChannel:
    """For networks with no live transport: the chain's events still tell the story."""

    announce_after = 0.0

    def publish(self, task_id: int, kind: str, data: dict[str, Any]) -> None:
        return None

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return lambda: None
