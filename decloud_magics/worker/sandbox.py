"""Run a task package in a fresh, limited process and return its result package.

Why a spawned process: the cell is a stranger's code. It may loop forever,
eat all memory, fill the disk, fork without end, read the environment or call
``os._exit``. The worker must survive all of that and still settle the task,
so the cell never runs in the worker's own interpreter. Each run gets:

- a new session, so one kill reaches everything it started; and, when
  ``unshare`` works (probed once), user + PID + mount namespaces with their
  own ``/proc``, so even a child that left the process group dies with the
  sandbox and the worker's processes are invisible, plus a network namespace
  without interfaces unless ``SandboxLimits.network``. The process is forked
  from a zygote that never runs a cell, or exec'd where that cannot serve
  (``launch.py``);
- limits (address space, CPU seconds, file size) that the child sets before it
  reads a task byte, and a pids cgroup when one can be created: RLIMIT_NPROC
  counts every process of the uid and does not bind root at all, so without
  the cgroup a root worker relies on the timeout against a fork bomb;
- a scratch directory as cwd, HOME and TMPDIR, deleted afterwards, and an
  environment built from an allowlist: none of the worker's variables (keys,
  tokens) reach the cell. Files are another matter for a root worker: root
  reads any file, and the user namespace maps it to root. A worker keeps its
  key in memory and never passes a key path; run workers as an unprivileged
  user to make file modes count.

``run_in_sandbox`` always returns result bytes: timeouts, limits and crashes
become a ``failure`` sentence. The process usually comes warm (``spares.py``):
started ahead, runtime imported, waiting for the config; it still runs this
one task only.
"""

from __future__ import annotations

import logging
import os
import selectors
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..buffers import BytesLike
from ..errors import DecloudError
from ..package import ResultPackage, decode_result, encode_result
from ..processes import pid_alive
from . import cgroups, launch
from .landlock import task_rules
from .spares import REFILL_DELAY, Process, SparePool, TaskProc, close_at_exit, remove_scratch

__all__ = ["SandboxLimits", "network_isolation_available", "prewarm", "run_in_sandbox", "shutdown_spares"]

log = logging.getLogger(__name__)
LineSink = Callable[[str], None]

MB = 1024 * 1024
_PACKAGE_DIR = launch.PACKAGE_DIR
_KILL_GRACE = 5.0  # seconds to drain pipes after a kill before giving up on them


@dataclass(frozen=True)
class SandboxLimits:
    """What one run may use.

    ``memory_mb`` caps address space (RLIMIT_AS), not resident memory: importing
    pandas alone takes ~350 MB of it. ``max_processes`` counts threads too.
    """

    cpu_seconds: int | None = None
    memory_mb: int | None = 4096
    file_size_mb: int | None = 1024
    max_processes: int | None = launch.DEFAULT_MAX_PROCESSES
    stdout_cap_bytes: int = 1 * MB
    stderr_cap_bytes: int = 1 * MB
    max_output_mb: int = 1024
    threads: int = 1
    network: bool = False


def run_in_sandbox(
    task_bytes: BytesLike,
    *,
    timeout: float,
    limits: SandboxLimits | None = None,
    on_stdout: LineSink | None = None,
    python: str = sys.executable,
    cancel: threading.Event | None = None,
    queued: bool = False,
    refill: bool = True,
) -> bytes | memoryview:
    """Run a task package in a sandbox process; return the encoded result package.

    ``on_stdout`` gets each stdout line as it arrives (live progress), called
    from the calling thread. Setting ``cancel`` kills the run (its worker lost
    the task); the result then says it was cancelled. ``queued`` says more tasks
    wait behind this one: the next warm interpreter is started at once rather
    than when this run ends. ``refill=False`` leaves the next one to the caller's
    ``prewarm()`` once it has stored and settled this result: a new process
    (3 ms of CPU forked, 40–60 ms exec'd, and a cgroup move) would compete
    with exactly that work on a small worker; it still starts ``REFILL_DELAY``
    after this run began. Timeouts, limits and crashes come back as results
    with a ``failure`` sentence; only a bug of the worker itself raises.
    """
    limits = limits or SandboxLimits()
    started = time.monotonic()
    _sweep_leftovers()
    isolated = launch.unshare_works(python, limits.network)
    refill_delay = 0.0 if queued else REFILL_DELAY
    child = _spares.take((python, limits.network), limits.threads, refill_delay=refill_delay)
    run: _Run | None = None
    try:
        if child is not None and not child.hand_over(task_bytes, _config(limits, child)):
            child.discard()  # it died between the check and the config: start one now
            child = None
        if child is None:
            child = launch.start((python, limits.network), limits.threads)
            child.hand_over(task_bytes, _config(limits, child))  # if it died already, the run says so
        _spares.count(child.warm)
        cgroup = child.cgroup
        run = _Run(child.proc, child.result_fd, limits, on_stdout, cgroup)
        run.supervise(timeout, cancel)  # the timeout counts from the config, not from when the spare started
        run.wall = time.monotonic() - started
        if isolated and run.returncode == 1 and run.stderr.head.endswith(launch.UNSHARE_SIGKILL):
            # unshare re-raises the child's death signal on itself, which fails for
            # SIGKILL (util-linux 2.38) and ends in "exit 1" plus this line.
            del run.stderr.head[-len(launch.UNSHARE_SIGKILL) :]
            run.returncode = -signal.SIGKILL
        run.process_limit_hit = cgroup is not None and cgroups.limit_hit(cgroup)
        return _assemble(run, limits, timeout, isolated, cgroup is not None)
    finally:
        if refill:
            _spares.prewarm((python, limits.network), limits.threads)  # this run is over: refill now
        if run is None and child is not None:
            child.discard()  # never supervised: kill and reap it here, and remove its cgroup and scratch dir
        elif child is not None:
            if child.cgroup is not None:
                cgroups.remove(child.cgroup)
            remove_scratch(child.scratch)


def network_isolation_available(python: str = sys.executable) -> bool:
    """Whether this machine can cut a sandbox off the network (``unshare`` works); probed once."""
    return launch.unshare_works(python, network=False)


def prewarm(python: str = sys.executable, network: bool = False) -> None:
    """Start a spare sandbox process now, so that even the first task finds one ready."""
    _spares.prewarm((python, network), SandboxLimits().threads)


def shutdown_spares() -> None:
    """Kill the waiting spare processes (done at interpreter exit anyway); later runs start new ones."""
    _spares.close()


def _config(limits: SandboxLimits, child: Process) -> dict[str, object]:
    """What the child applies to itself before it reads a task byte; the run's process cap goes
    into the cgroup the child joined while it waited (RLIMIT_NPROC where there is none)."""
    cgroup = child.cgroup
    if cgroup is not None and limits.max_processes != launch.DEFAULT_MAX_PROCESSES:  # else it has this cap
        try:
            cgroups.set_max(cgroup, limits.max_processes)
        except OSError:
            cgroup = None  # gone under us (a sweep of a dead worker's name): fall back to the rlimit
    return {
        "landlock": task_rules(child.scratch, _PACKAGE_DIR) if child.confined_by is None else None,
        "rlimits": _rlimits(limits, nproc=cgroup is None),
        "memory_mb": limits.memory_mb,
        "cpu_seconds": limits.cpu_seconds,
        "file_size_mb": limits.file_size_mb,
        "max_output_bytes": limits.max_output_mb * MB,
    }


def _rlimits(limits: SandboxLimits, nproc: bool) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {"RLIMIT_CORE": (0, 0)}
    if limits.cpu_seconds:
        out["RLIMIT_CPU"] = (limits.cpu_seconds, limits.cpu_seconds + 1)  # SIGXCPU first, SIGKILL after
    if limits.memory_mb:
        out["RLIMIT_AS"] = (limits.memory_mb * MB,) * 2
    if limits.file_size_mb:
        out["RLIMIT_FSIZE"] = (limits.file_size_mb * MB,) * 2
    if nproc and limits.max_processes and os.geteuid() != 0:
        # The count is per uid (threads included): leave room for what the worker's user already runs.
        count = limits.max_processes + sum(_threads_of(pid) for pid in os.listdir("/proc") if pid.isdigit())
        out["RLIMIT_NPROC"] = (count, count)
    return out


def _threads_of(pid: str) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task")) if os.stat(f"/proc/{pid}").st_uid == os.getuid() else 0
    except OSError:
        return 0


class _Stream:
    """One captured pipe: keeps the head up to a cap and hands complete lines to a callback."""

    def __init__(self, cap: int, on_line: LineSink | None = None) -> None:
        self.head = bytearray()
        self.cap = cap
        self.truncated = False
        self.on_line = on_line
        self._pending = bytearray()

    def feed(self, chunk: bytes) -> None:
        kept = chunk[: max(self.cap - len(self.head), 0)]
        self.head += kept
        self.truncated = self.truncated or len(kept) < len(chunk)
        if self.on_line is None or not kept:
            return
        self._pending += kept
        *lines, rest = self._pending.split(b"\n")
        if len(rest) > 65536:  # a progress bar without newlines still shows up
            lines, rest = [*lines, rest], bytearray()
        self._pending = bytearray(rest)
        for line in lines:
            self._emit(line)

    def close(self) -> None:
        if self._pending:
            self._emit(self._pending)
            self._pending = bytearray()

    def _emit(self, line: bytes | bytearray) -> None:
        try:
            self.on_line(line.decode("utf-8", "replace"))  # type: ignore[misc]
        except Exception:  # the worker's callback failing must not fail the run
            log.exception("on_stdout callback failed; live output is off for this run")
            self.on_line = None

    def text(self) -> str:
        return self.head.decode("utf-8", "replace")


class _Run:
    """One sandbox process, read in the calling thread until it and its children are gone."""

    def __init__(
        self,
        proc: TaskProc,
        result_fd: int,
        limits: SandboxLimits,
        on_line: LineSink | None,
        cgroup: str | None,
    ) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        self.proc, self.result_fd, self.cgroup = proc, result_fd, cgroup
        self.stdout = _Stream(limits.stdout_cap_bytes, on_line)
        self.stderr = _Stream(limits.stderr_cap_bytes)
        self.streams = {proc.stdout.fileno(): self.stdout, proc.stderr.fileno(): self.stderr}
        self.result = bytearray()
        self.result_cap = limits.max_output_mb * MB + 64 * MB  # the values plus manifest and displays
        self.result_overflow = self.timed_out = self.cancelled = self.process_limit_hit = False
        self.returncode, self.cpu_seconds, self.wall = 0, 0.0, 0.0

    def supervise(self, timeout: float, cancel: threading.Event | None = None) -> None:
        deadline = time.monotonic() + timeout
        sel = selectors.DefaultSelector()
        for fd in (*self.streams, self.result_fd):
            sel.register(fd, selectors.EVENT_READ)
        exited, killed_at = False, None
        try:
            while sel.get_map():
                now = time.monotonic()
                if killed_at is None and now >= deadline:
                    self.timed_out, killed_at = True, self._kill()
                if killed_at is None and cancel is not None and cancel.is_set():
                    self.cancelled, killed_at = True, self._kill()
                if killed_at is not None and now - killed_at > _KILL_GRACE:
                    break  # something outside our reach holds a pipe open; stop listening
                wait = 0.05 if killed_at is not None else max(0.0, min(deadline - now, 0.25))
                for key, _ in sel.select(wait):
                    self._read(sel, key.fd)
                if not exited and self.proc.exited():
                    exited = True
                    killed_at = self._kill() if killed_at is None else killed_at  # children left behind
        finally:
            sel.close()
            os.close(self.result_fd)
            self.stdout.close()
            if killed_at is None:
                self._kill()
        # killed and drained, it ends at once; its status and CPU time (the cell's included)
        ended = self.proc.reap(timeout=_KILL_GRACE + 10)
        self.returncode, self.cpu_seconds = ended if ended is not None else (-signal.SIGKILL, 0.0)
        for pipe in (self.proc.stdout, self.proc.stderr):
            pipe.close()  # type: ignore[union-attr]

    def _read(self, sel: selectors.BaseSelector, fd: int) -> None:
        try:
            chunk = os.read(fd, 1 << 20)
        except OSError:
            chunk = b""
        if not chunk:
            sel.unregister(fd)
        elif fd != self.result_fd:
            self.streams[fd].feed(chunk)
        elif len(self.result) + len(chunk) > self.result_cap or self.result_overflow:
            self.result_overflow = True  # keep draining so the child is not blocked, but drop the bytes
        else:
            self.result += chunk

    def _kill(self) -> float:
        self.proc.kill_all()
        if self.cgroup is not None:  # reaches children that left the group when there is no PID namespace
            cgroups.kill_all(self.cgroup)
        return time.monotonic()


def _assemble(
    run: _Run, limits: SandboxLimits, timeout: float, isolated: bool, cgroup: bool
) -> bytes | memoryview:
    res, readable = ResultPackage(), False
    if run.result and not run.result_overflow:
        try:
            res, readable = decode_result(bytes(run.result), verify=False), True  # hashed again below
        except DecloudError:
            log.warning("the sandbox runtime wrote a malformed result")
    res.stdout, res.stderr = run.stdout.text(), run.stderr.text()
    res.truncated = {"stdout": run.stdout.truncated, "stderr": run.stderr.truncated}
    res.exit_status = run.returncode
    res.timings = {**res.timings, "wall": run.wall, "cpu": run.cpu_seconds}
    res.sandbox = {
        # from the child: whether Landlock confined its file access (absent when it never got that far)
        "files_confined": bool(res.sandbox.get("files_confined")),
        "network_isolated": isolated and not limits.network,
        "pid_namespace": isolated,
        "pids_cgroup": cgroup,
    }
    res.failure = _failure(run, res, readable, limits, timeout)
    return encode_result(res)


def _failure(
    run: _Run, res: ResultPackage, readable: bool, limits: SandboxLimits, timeout: float
) -> str | None:
    """The sentence for a run the sandbox cut short, the most telling cause first."""
    code = run.returncode
    if run.cancelled:
        return "The task was cancelled by its worker, which lost it to another worker."
    if run.timed_out:
        return f"The task was killed after its {timeout:g} s wall-clock timeout."
    if code == -signal.SIGXCPU or (
        code == -signal.SIGKILL and run.cpu_seconds >= (limits.cpu_seconds or 1e18)
    ):
        return f"The task was stopped after using its {limits.cpu_seconds} s of CPU time."
    if code == -signal.SIGXFSZ:
        return f"The task was stopped for writing a file larger than its {limits.file_size_mb} MB limit."
    if run.result_overflow:
        return f"The task's values came to more than the worker's {limits.max_output_mb} MB result limit."
    if res.failure:
        return res.failure
    if run.process_limit_hit and (res.error is not None or not readable):
        return f"The cell tried to run more than the sandbox's {limits.max_processes} processes."
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        hint = " (the machine may have run out of memory)" if code == -signal.SIGKILL else ""
        return f"The task's process was killed by {name}{hint}."
    if readable:
        return None
    if run.result:
        return "The task's process returned a malformed result; the cell may have written to its result pipe."
    return f"The task's process ended (exit status {code}) before it reported a result; the cell may have called os._exit."


# -- isolation that depends on the machine -------------------------------------------

_spares = SparePool(launch.start)
close_at_exit(_spares, launch.close_fork_servers)
_probe_lock = threading.Lock()
_swept: list[bool] = []


def _sweep_leftovers() -> None:
    """Remove scratch dirs and cgroups of workers that died mid-run (their finally never ran)."""
    with _probe_lock:
        if _swept:
            return
        _swept.append(True)
    base = cgroups.base()
    places = [(tempfile.gettempdir(), "decloud-task-")] + (
        [(base, "decloud-")] if isinstance(base, str) else []
    )
    for folder, prefix in places:
        for name in os.listdir(folder):
            owner = name[len(prefix) :].split("-")[0] if name.startswith(prefix) else ""
            if owner.isdigit() and not pid_alive(int(owner)):
                path = os.path.join(folder, name)
                if folder == base:
                    cgroups.remove(path)
                else:
                    shutil.rmtree(path, ignore_errors=True)

