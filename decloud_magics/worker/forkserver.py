"""The worker's side of the zygote (``zygote.py``): sandbox processes by fork rather than exec.

``ForkServer`` starts the zygote (wrapped like any sandbox process: killed
with the worker, inside a user namespace) from a thread of its own that then
reads the zygote's messages for as long as it lives: ``--pdeathsig`` fires
when the thread that started a process ends, so a zygote started from a
worker's short-lived thread would die with it, and every task with it.

``ForkedProc`` is a forked sandbox process as the rest of the sandbox sees
a ``Popen``: its pipes, ``exited()``, ``kill_all()`` and ``reap()``. It is not
the worker's child: a pidfd (opened by the zygote before the process could
be reaped, so it names that process and no later one) tells when it ended
and carries the kill, and the zygote reports its exit status and CPU time.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import IO, Any

from ..processes import signal_group

log = logging.getLogger(__name__)

#: Seconds the zygote may take to start and import the runtime.
START_TIMEOUT = 30.0


def available() -> bool:
    """Whether this platform has what the fork server needs (pidfds, fd passing)."""
    return hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal") and hasattr(socket, "send_fds")


class ForkedProc:
    """One sandbox process forked by the zygote."""

    def __init__(self, server: ForkServer, pid: int, pidfd: int, stdin: IO[bytes], stdout: IO[bytes],
                 stderr: IO[bytes]) -> None:  # fmt: skip
        self.pid = pid
        self.stdin: IO[bytes] | None = stdin
        self.stdout: IO[bytes] | None = stdout
        self.stderr: IO[bytes] | None = stderr
        self.returncode: int | None = None
        self.cpu_seconds = 0.0
        self._pidfd: int | None = pidfd
        self._server = server
        self._ended = threading.Event()

    def exited(self) -> bool:
        """Whether it has ended (its status may still be on its way from the zygote)."""
        if self._ended.is_set() or self._pidfd is None:
            return True
        readable, _, _ = select.select([self._pidfd], [], [], 0)
        return bool(readable)

    def kill_all(self) -> None:
        """SIGKILL it: its task process dies with it (pdeathsig), and their namespace with that."""
        if self._pidfd is not None and not self._ended.is_set():
            try:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def reap(self, timeout: float | None = None) -> tuple[int, float] | None:
        """``(exit code, CPU seconds)`` once the zygote reports the end; None if ``timeout`` came first."""
        if not self._ended.wait(timeout):
            return None
        self.close_pidfd()
        return self.returncode if self.returncode is not None else -signal.SIGKILL, self.cpu_seconds

    def close_pidfd(self) -> None:
        pidfd, self._pidfd = self._pidfd, None
        if pidfd is not None:
            os.close(pidfd)

    def _ended_with(self, code: int, cpu: float) -> None:
        self.returncode, self.cpu_seconds = code, cpu
        self._ended.set()


class ForkServer:
    """One zygote for one Python; ``spawn`` forks a sandbox process from it."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], cwd: str) -> None:
        self.cwd = cwd  # the zygote's own folder, which its user removes after close()
        self._argv, self._env = list(argv), env
        self._lock = threading.Lock()
        self._next_id = 0
        self._replies: dict[int, Future[tuple[int, int]]] = {}
        self._procs: dict[int, ForkedProc] = {}
        self._early_exits: dict[int, tuple[int, float]] = {}  # an end reported before its proc was made
        self._ready: Future[int] = Future()
        self._dead = threading.Event()
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._serve, name="decloud-zygote", daemon=True)
        self._thread.start()
        try:
            self._ready.result(timeout=START_TIMEOUT)
        except Exception:
            self.close()
            raise

    @property
    def alive(self) -> bool:
        return not self._dead.is_set()

    @property
    def pid(self) -> int | None:
        """The zygote's pid, as it reported it once ready."""
        return self._ready.result() if self._ready.done() and self._ready.exception() is None else None

    def spawn(self, scratch: str, env: dict[str, str], cgroup_procs: str | None, network: bool) -> tuple[ForkedProc, int]:
        """A new sandbox process waiting for its config; returns it and our read end of its result pipe."""
        ends = [os.pipe() for _ in range(4)]  # stdout, stderr, result, config
        theirs = [ends[0][1], ends[1][1], ends[2][1], ends[3][0]]
        try:
            with self._lock:
                if self._dead.is_set() or self._sock is None:
                    raise OSError("the sandbox zygote is not running")
                self._next_id += 1
                request_id = self._next_id
                reply: Future[tuple[int, int]] = Future()
                self._replies[request_id] = reply
                request = {"id": request_id, "scratch": scratch, "env": env, "cgroup_procs": cgroup_procs,
                           "network": network}  # fmt: skip
                socket.send_fds(self._sock, [json.dumps(request).encode()], theirs)
            pid, pidfd = reply.result(timeout=START_TIMEOUT)
        except BaseException:
            for fd in (ends[0][0], ends[1][0], ends[2][0], ends[3][1]):
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        proc = ForkedProc(self, pid, pidfd, os.fdopen(ends[3][1], "wb", buffering=0),
                          os.fdopen(ends[0][0], "rb", buffering=0), os.fdopen(ends[1][0], "rb", buffering=0))  # fmt: skip
        with self._lock:
            self._procs[pid] = proc
            early = self._early_exits.pop(pid, None)
        if early is not None or self._dead.is_set():
            proc._ended_with(*(early or (-signal.SIGKILL, 0.0)))
        return proc, ends[2][0]

    def close(self) -> None:
        """Stop the zygote; the sandbox processes it forked die with it."""
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        proc = self._proc
        if proc is not None:
            signal_group(proc.pid, signal.SIGKILL)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    # -- the zygote's thread -----------------------------------------------------

    def _serve(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            argv = [*self._argv, str(theirs.fileno())]
            self._proc = subprocess.Popen(argv, env=self._env, cwd=self.cwd, pass_fds=(theirs.fileno(),),
                                          stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 (whatever it is, the starter hears of it)
            self._ready.set_exception(exc)
            self._dead.set()
            return
        finally:
            theirs.close()
        self._sock = ours
        try:
            while True:
                message, fds, _flags, _addr = socket.recv_fds(ours, 65536, 4)
                if not message:
                    break
                self._handle(json.loads(message), fds)
        except OSError:
            pass
        finally:
            self._die()

    def _handle(self, message: dict[str, Any], fds: list[int]) -> None:
        if "ready" in message:
            if message.get("namespaces"):
                self._ready.set_result(int(message["ready"]))
            else:
                self._ready.set_exception(OSError("a fork of the zygote cannot enter namespaces of its own here"))
        elif "id" in message:
            with self._lock:
                reply = self._replies.pop(int(message["id"]), None)
            if reply is not None and fds:
                reply.set_result((int(message["pid"]), fds[0]))
            else:
                for fd in fds:
                    os.close(fd)
        elif "exited" in message:
            pid, code, cpu = int(message["exited"]), int(message["code"]), float(message["cpu"])
            with self._lock:
                proc = self._procs.pop(pid, None)
                if proc is None:
                    self._early_exits[pid] = (code, cpu)
            if proc is not None:
                proc._ended_with(code, cpu)

    def _die(self) -> None:
        """The zygote is gone: so is every process it forked (pdeathsig); nobody waits in vain."""
        self._dead.set()
        if not self._ready.done():
            self._ready.set_exception(OSError("the sandbox zygote ended before it was ready"))
        with self._lock:
            replies, self._replies = list(self._replies.values()), {}
            procs, self._procs = list(self._procs.values()), {}
        for reply in replies:
            reply.set_exception(OSError("the sandbox zygote ended"))
        for proc in procs:
            proc._ended_with(-signal.SIGKILL, 0.0)
        if self._sock is not None:
            self._sock.close()
        if self._proc is not None:
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log.warning("the sandbox zygote (pid %d) did not exit", self._proc.pid)
