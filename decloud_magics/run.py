"""A submitted run: its events as they happen, and its result when it ends.

``Run`` is what ``Client.submit`` returns. Its events are fed by the client's
watcher (chain logs and the live channel); callbacks, ``wait``, ``watch`` and
``result`` all read the same ordered list, so every view tells one story.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import RemoteError, RunFailed, RunTimeout
from .models import STATUS_AFTER, EventKind, RunEvent, Status

if TYPE_CHECKING:
    from .client import Client

Callback = Callable[[RunEvent], None]


@dataclass
class Result:
    """What came back from a run, decoded safely. ``values`` are ready to bind."""

    run_id: str
    status: Status
    stdout: str = ""
    stderr: str = ""
    displays: list[dict[str, Any]] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    value_errors: dict[str, str] = field(default_factory=dict)
    error: RemoteError | None = None
    failure: str | None = None
    result_cid: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.failure is None

    def raise_for_error(self) -> None:
        """Raise the remote exception (or the sandbox's failure) if the run did not succeed."""
        if self.error is not None:
            raise self.error
        if self.failure is not None:
            raise RunFailed(self.failure)


class Run:
    """One task on the market, followed from creation to its end.

    In[1]: run = client.submit("x = 1 + 1")
    In[2]: run.on("completed", lambda e: print("done in", e.data.get("elapsed_s")))
    In[3]: run.result().values
    Out[3]: {'x': 2}
    """

    def __init__(
        self,
        client: Client,
        run_id: str,
        *,
        name: str | None,
        network: str,
        price_wei: int,
        trust_pickle: bool = False,
        outputs: tuple[str, ...] = (),
    ) -> None:
        self._client = client
        self.id = run_id
        self.name = name
        self.network = network
        self.price_wei = price_wei
        self.trust_pickle = trust_pickle
        self.outputs = outputs
        self.wanted: tuple[str, ...] = outputs  # the names that may come back: asked for, or assigned by the cell
        self.task_id: int | None = None
        self.input_cid: str | None = None
        self.result_cid: str | None = None
        self.worker: str | None = None
        self.validators = 1
        self.deadline: int | None = None
        self.gas_used = 0
        self.gas_cost_wei = 0
        self.refunded_wei = 0
        self.status = Status.CREATED
        self.events: list[RunEvent] = []
        self.submitted_monotonic = time.monotonic()
        self._result: Result | None = None
        self._failure: RunFailed | None = None
        self._lock = threading.RLock()
        self._done = threading.Event()
        self._callbacks: dict[str, list[Callback]] = {}
        self._watchers: list[queue.Queue[RunEvent]] = []

    def __repr__(self) -> str:
        return f"<Run {self.id} {self.status.value} task={self.task_id} network={self.network}>"

    # -- the event API ---------------------------------------------------------

    def on(self, kind: str | EventKind, callback: Callback) -> Callable[[], None]:
        """Call ``callback(event)`` for each event of ``kind`` ("*" for all).

        Events that already happened are replayed at once, so a late subscriber
        misses nothing. Returns a function that unsubscribes.
        """
        key = kind.value if isinstance(kind, EventKind) else str(kind)
        if key != "*" and key not in EventKind._value2member_map_:
            known = ", ".join(k.value for k in EventKind)
            raise ValueError(f"'{key}' is not an event kind: use one of {known}, or '*'.")
        with self._lock:
            self._callbacks.setdefault(key, []).append(callback)
            past = [e for e in self.events if key in ("*", e.kind.value)]
        for event in past:
            callback(event)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._callbacks.get(key, []):
                    self._callbacks[key].remove(callback)

        return unsubscribe

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> Run:
        """Block until the run ends; ``RunTimeout`` if ``timeout`` seconds pass first."""
        if not self._done.wait(timeout):
            raise RunTimeout(
                f"Run {self.id} is still {self.status.value} after {timeout:g} s; "
                f"wait longer or check it with `%decloud wait {self.id}`."
            )
        return self

    def watch(self, timeout: float | None = None) -> Iterator[RunEvent]:
        """Yield every event, past and future, until the final one."""
        inbox: queue.Queue[RunEvent] = queue.Queue()
        with self._lock:
            past = list(self.events)
            self._watchers.append(inbox)
        try:
            for event in past:
                yield event
                if event.is_final:
                    return
            end = None if timeout is None else time.monotonic() + timeout
            while True:
                remaining = None if end is None else max(0.0, end - time.monotonic())
                try:
                    event = inbox.get(timeout=remaining)
                except queue.Empty:
                    raise RunTimeout(f"Run {self.id} did not end within {timeout:g} s.") from None
                yield event
                if event.is_final:
                    return
        finally:
            with self._lock:
                self._watchers.remove(inbox)

    def result(self, timeout: float | None = None) -> Result:
        """The run's outputs. Raises ``RunFailed`` when there is nothing to show
        (not processed, cancelled, disputed, or a result that failed verification)."""
        self.wait(timeout)
        if self._result is not None:
            return self._result
        raise self._failure or RunFailed(f"Run {self.id} ended {self.status.value} without a result.")

    def cancel(self) -> int:
        """Cancel while no worker holds the task; returns the refund in wei."""
        return self._client.cancel(self)

    @property
    def elapsed_s(self) -> float:
        end = self.events[-1].data.get("elapsed_s") if self.done() and self.events else None
        return float(end) if end is not None else time.monotonic() - self.submitted_monotonic

    @property
    def total_cost_wei(self) -> int:
        """What this run cost the requester: price (unless refunded) plus gas."""
        return self.price_wei - self.refunded_wei + self.gas_cost_wei

    # -- fed by the client ---------------------------------------------------

    def _emit(self, kind: EventKind, **fields: Any) -> RunEvent | None:
        with self._lock:
            if self._done.is_set():
                return None  # a run ends once; late chain logs change nothing
            data = dict(fields.pop("data", {}) or {})
            data.setdefault("elapsed_s", round(time.monotonic() - self.submitted_monotonic, 3))
            event = RunEvent(
                kind=kind,
                run_id=self.id,
                gas_used=self.gas_used,
                price_wei=self.price_wei,
                worker=fields.pop("worker", self.worker),
                data=data,
                **fields,
            )
            self.events.append(event)
            if kind in STATUS_AFTER:
                self.status = STATUS_AFTER[kind]
            callbacks = list(self._callbacks.get(kind.value, [])) + list(self._callbacks.get("*", []))
            watchers = list(self._watchers)
        self._client._record_event(self, event)
        for inbox in watchers:
            inbox.put(event)
        for callback in callbacks:
            try:
                callback(event)
            except Exception as exc:  # noqa: BLE001 (a user's callback must not break the watcher)
                self._client._report_callback_error(self, exc)
        if event.is_final:
            self._done.set()
        return event

    def _finish(self, kind: EventKind, *, result: Result | None = None, failure: RunFailed | None = None,
                **fields: Any) -> None:  # fmt: skip
        with self._lock:
            if self._done.is_set():
                return
            self._result = result
            self._failure = failure
        self._emit(kind, **fields)
