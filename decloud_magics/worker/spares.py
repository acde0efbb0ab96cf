"""Warm spares: sandbox processes started ahead of their task.

A sandbox process needs its namespaces, its pids cgroup (joining one waits
for an RCU grace period) and, when exec'd, an interpreter and the runtime's
imports before it can take a task (``launch.py``). So, for each kind of
sandbox (python, network), one process is started in advance with its own
scratch dir and waits for a config (on its stdin, or its config pipe when
forked by the zygote). A run takes it, hands it the task, and a new spare is
started behind it. Each process still runs one task and exits: nothing a
cell does can reach the next one.

The next spare is started when the run that took the last one has ended (or
after ``REFILL_DELAY`` if it runs long): started at once, it would compete for
the CPU with the very task it is meant to speed up, on the few cores of a
laptop or a small worker.

Spares are started from one long-lived thread because the sandbox's
``--pdeathsig`` fires when the *thread* that started it ends, not the
process: a spare started from a short-lived thread would die with that thread
(the zygote has a thread of its own for the same reason).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import select
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from subprocess import Popen
from typing import IO, Protocol

from ..buffers import BytesLike
from ..processes import signal_group
from . import cgroups, landlock

log = logging.getLogger(__name__)

# A spare waiting longer than this is replaced: the package on disk may have
# been upgraded under it, and it keeps the PATH it was started with.
MAX_AGE = 600.0
#: Seconds a refill waits for the run that took the spare to end.
REFILL_DELAY = 0.5
#: Seconds a run waits for a spare that is starting, before it starts its own.
MAX_WAIT = 5.0
Key = tuple[str, bool]  # (python, network): what decides how a sandbox process is started


class TaskProc(Protocol):
    """A sandbox process, started by exec (``SpawnedProc``) or forked by the zygote (``ForkedProc``)."""

    pid: int
    stdin: IO[bytes] | None
    stdout: IO[bytes] | None
    stderr: IO[bytes] | None
    returncode: int | None

    def exited(self) -> bool: ...

    def kill_all(self) -> None: ...

    def reap(self, timeout: float | None = None) -> tuple[int, float] | None: ...


class SpawnedProc(Popen):  # type: ignore[type-arg]
    """A sandbox process started by exec: the worker's own child, leader of its own process group."""

    def exited(self) -> bool:
        """Ended but not reaped, so its pid (our process group's id) stays ours while stragglers are killed."""
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def kill_all(self) -> None:
        signal_group(self.pid, signal.SIGKILL)

    def reap(self, timeout: float | None = None) -> tuple[int, float] | None:
        """``(exit code, CPU seconds of it and what it waited for)``; None if ``timeout`` came first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                pid, status, usage = os.wait4(self.pid, 0 if deadline is None else os.WNOHANG)
            except ChildProcessError:  # someone else in the worker reaped it: the status is lost
                self.returncode = -signal.SIGKILL
                return self.returncode, 0.0
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                return self.returncode, usage.ru_utime + usage.ru_stime
            if deadline is not None and time.monotonic() >= deadline:
                return None
            if deadline is None or not self._wait_pidfd(max(0.0, deadline - time.monotonic())):
                time.sleep(0.01)

    def _wait_pidfd(self, timeout: float) -> bool:
        """Sleep until it ends or ``timeout`` passes, woken by its pidfd; False without one to wait on."""
        if not hasattr(os, "pidfd_open"):
            return False
        try:
            pidfd = os.pidfd_open(self.pid)
        except OSError:  # no pidfds in this kernel, or it was reaped meanwhile (the next wait4 says so)
            return False
        try:
            select.select([pidfd], [], [], timeout)
        finally:
            os.close(pidfd)
        return True


@dataclass(eq=False)
class Process:
    """A sandbox process that has not been given its task yet (its stdin, or config pipe, is still open)."""

    proc: TaskProc
    scratch: str
    result_fd: int  # our read end of the result pipe
    child_fd: int  # the child's write end, by its number in the child
    threads: int
    cgroup: str | None = None  # its pids cgroup, joined while it waits (``cgroups.py``)
    # the ``landlock.generation()`` of the rules it confined itself with while it waits (a forked
    # process), or None when it confines itself from its config, once it has its task
    confined_by: int | None = None
    warm: bool = False
    born: float = field(default_factory=time.monotonic)

    def usable(self, max_age: float) -> bool:
        if time.monotonic() - self.born > max_age:
            return False
        if self.confined_by not in (None, landlock.generation()):
            return False  # confined before the worker hid more (its key file): too little
        return not self.proc.exited()  # a dead one is still reaped by discard()

    def hand_over(self, task_bytes: BytesLike, config: dict[str, object]) -> bool:
        """Put the task in the scratch dir and send the config; False if the process is already gone.

        The child sets its limits from this config before it opens the task file.
        """
        if self.proc.exited():
            # gone: a forked one's own child may still read its pipe for a moment before it follows
            return False
        task_path = os.path.join(self.scratch, ".decloud-task")
        with open(task_path, "wb") as fh:
            fh.write(task_bytes)
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(
                (json.dumps({**config, "task": task_path, "result_fd": self.child_fd}) + "\n").encode()
            )
            self.proc.stdin.close()
        except OSError:  # BrokenPipeError: it died while it waited
            return False
        return True

    def discard(self) -> None:
        """Kill it, reap it, and remove its scratch dir (it never got a task, so nothing there matters)."""
        self.proc.kill_all()
        if self.proc.reap(timeout=10) is None:  # unreapable now; the kernel's pdeathsig still covers it
            log.warning("a discarded sandbox spare (pid %d) did not exit", self.proc.pid)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        try:
            os.close(self.result_fd)
        except OSError:
            pass
        remove_scratch(self.scratch)
        if self.cgroup is not None:
            cgroups.remove(self.cgroup)


def remove_scratch(path: str) -> None:
    """Delete a sandbox process's scratch dir, even where its cell made parts of it read-only."""
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=_force_remove)
    else:
        shutil.rmtree(path, onerror=_force_remove)


def _force_remove(func: Callable[..., object], path: str, _exc: object) -> None:
    try:
        os.chmod(os.path.dirname(path), 0o700)
        os.chmod(path, 0o700)
        func(path)
    except OSError:
        pass


class SparePool:
    """At most one ready spare per key; taking one is atomic, and asks for the next."""

    def __init__(self, start: Callable[[Key, int], Process], max_age: float = MAX_AGE) -> None:
        self._start = start
        self.max_age = max_age
        self.served = {"warm": 0, "cold": 0}  # runs served each way, for tests and logs
        self._forget()
        # A forked copy of the worker must not use (or kill) the parent's spares.
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Condition()
        self._ready: dict[Key, Process] = {}
        self._wanted: dict[Key, tuple[int, float]] = {}  # key -> (threads, due), for the maker thread
        self._making: dict[Key, int] = {}  # key -> threads of the spare being started
        self._thread: threading.Thread | None = None
        self._closed = False

    def take(self, key: Key, threads: int, refill_delay: float = REFILL_DELAY) -> Process | None:
        """The ready spare for ``key`` if its thread count matches, else None (the caller starts cold).

        Either way the slot is emptied and refilled for this thread count: the
        thread count is in the environment, fixed when the process starts, and
        the next task most likely asks what this one did. The refill waits for
        ``prewarm`` (the run ended) or ``refill_delay``: 0 when more tasks are
        queued behind this one, whose next spare should start at once.
        """
        with self._lock:
            if key not in self._ready and self._making.get(key) == threads:
                # One is starting already: waiting for it is never slower than starting
                # another, and does not put a second interpreter start on the same cores.
                self._lock.wait_for(lambda: key in self._ready or key not in self._making, MAX_WAIT)
            spare = self._ready.pop(key, None)
            self._want(key, threads, delay=refill_delay)
        if spare is not None and (spare.threads != threads or not spare.usable(self.max_age)):
            spare.discard()
            spare = None
        return spare

    def count(self, warm: bool) -> None:
        with self._lock:
            self.served["warm" if warm else "cold"] += 1

    def prewarm(self, key: Key, threads: int) -> None:
        with self._lock:
            self._want(key, threads)

    def wait_ready(self, key: Key, timeout: float) -> bool:
        """Whether a spare for ``key`` is ready within ``timeout`` seconds."""
        with self._lock:
            return self._lock.wait_for(lambda: key in self._ready, timeout)

    def close(self, final: bool = False) -> None:
        """Kill the ready spares; ``final`` (interpreter exit) also stops making new ones."""
        with self._lock:
            self._closed = self._closed or final
            self._wanted.clear()
            spares, self._ready = list(self._ready.values()), {}
        for spare in spares:
            spare.discard()

    def _want(self, key: Key, threads: int, delay: float = 0.0) -> None:
        ready = self._ready.get(key)
        if self._closed or (ready is not None and ready.threads == threads) or self._making.get(key) == threads:
            return
        due = time.monotonic() + delay
        if key in self._wanted:
            due = min(due, self._wanted[key][1])
        self._wanted[key] = (threads, due)
        if self._thread is None:
            self._thread = threading.Thread(target=self._make_forever, name="decloud-spares", daemon=True)
            self._thread.start()
        self._lock.notify_all()

    def _make_forever(self) -> None:
        while True:
            with self._lock:
                while True:
                    self._lock.wait_for(lambda: bool(self._wanted))
                    key, (threads, due) = min(self._wanted.items(), key=lambda item: item[1][1])
                    if due <= time.monotonic():
                        break
                    self._lock.wait(due - time.monotonic())
                del self._wanted[key]
                self._making[key] = threads
            spare: Process | None = None
            try:
                spare = self._start(key, threads)
                spare.warm = True
            except Exception:  # runs start cold meanwhile, and the next run asks again
                log.exception("could not start a sandbox spare")
            stale: Process | None = None
            with self._lock:
                self._making.pop(key, None)
                # Keep it unless another thread count was asked for while it started.
                if spare is not None and not self._closed and key not in self._wanted:
                    stale, self._ready[key], spare = self._ready.get(key), spare, None
                self._lock.notify_all()
            for unused in (spare, stale):
                if unused is not None:
                    unused.discard()


def close_at_exit(pool: SparePool, *then: Callable[[], None]) -> None:
    """At interpreter exit: kill the spares, then run ``then`` (stopping what made them)."""

    def close_all() -> None:
        pool.close(final=True)
        for stop in then:
            stop()

    atexit.register(close_all)
