"""The zygote: a sandbox interpreter that never runs a cell, forked once per task.

Starting an interpreter and importing the runtime costs 40–60 ms of CPU,
more than a short task itself; a fork of a process that already did both
costs about 3 ms. So the worker starts one zygote per Python (inside a user
namespace, with the cell environment), and for each sandbox process it
wants, sends the zygote a request with the process's pipes. The zygote
forks; the fork, never the zygote, then enters the task's own namespaces:

* ``A`` (the fork) starts a session, joins the task's pids cgroup, unshares
  a PID, mount and network namespace, and forks ``B``; it waits for ``B`` and
  ends the way ``B`` ended, as ``unshare --fork`` does;
* ``B`` is PID 1 of its namespace: it mounts its own ``/proc``, takes the
  pipes as stdin/stdout/stderr, enters its scratch dir and environment and
  runs ``runtime.main``, which waits for the task's config as a warm spare does.

Every task still gets a fresh process, and nothing a cell does reaches the
zygote or the next task: the zygote only forks, and each fork runs one task.
The zygote reports each ``A``'s pid (with a pidfd the worker watches) and,
when it ends, its exit status and CPU time, over its control socket.
Everything here runs in the zygote's process; ``forkserver.py`` is the
worker's side.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import select
import signal
import socket
import tempfile
from typing import Any

from .runtime import confine_files, join_cgroup, rehearse
from .runtime import main as run_task  # imported once here, so that every fork has it ready

__all__ = ["main"]

_CLONE_NEWNS, _CLONE_NEWPID, _CLONE_NEWNET = 0x00020000, 0x20000000, 0x40000000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REC, _MS_PRIVATE = 2, 4, 8, 1 << 14, 1 << 18
_PR_SET_PDEATHSIG = 1
#: Where ``B`` finds its pipes: stdin, stdout, stderr, then the result pipe and the config pipe.
RESULT_FD, CONFIG_FD = 3, 4
#: In the scratch dir: the Landlock rules ``B`` confines itself with before it waits for its task.
RULES_FILE = ".decloud-rules"


def main(control_fd: int) -> None:
    """Serve fork requests on the control socket (``control_fd``) until the worker closes it."""
    control = socket.socket(fileno=control_fd)
    os.set_inheritable(control.fileno(), False)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the select below
    libc = ctypes.CDLL(None, use_errno=True)
    namespaces = _namespaces_work(libc)
    gc.freeze()  # what the zygote holds now is never collected in a fork, so never copied by the collector
    _send(control, {"ready": os.getpid(), "namespaces": namespaces})
    while True:
        readable, _, _ = select.select([control.fileno(), wake_r], [], [])
        if wake_r in readable:
            os.read(wake_r, 4096)
        _report_exits(control)
        if control.fileno() in readable:
            message, fds, _flags, _addr = socket.recv_fds(control, 65536, 8)
            if not message:
                return  # the worker is gone: its sandbox processes die with us (pdeathsig)
            _fork_one(control, libc, json.loads(message), fds, (wake_r, wake_w))


def _namespaces_work(libc: Any) -> bool:
    """Whether a fork can enter its own PID, mount and network namespaces and mount /proc here."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            if libc.unshare(_CLONE_NEWPID | _CLONE_NEWNS | _CLONE_NEWNET) == 0:
                inner = os.fork()
                if inner == 0:
                    _mount_own_proc(libc)  # raising, it ends in the _exit(1) below
                    os._exit(0)
                code = os.waitstatus_to_exitcode(os.waitpid(inner, 0)[1])
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def _send(control: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    socket.send_fds(control, [json.dumps(message).encode()], fds or [])


def _report_exits(control: socket.socket) -> None:
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        cpu = usage.ru_utime + usage.ru_stime  # B's time included: A waited for it
        _send(control, {"exited": pid, "code": os.waitstatus_to_exitcode(status), "cpu": cpu})


def _fork_one(control: socket.socket, libc: Any, request: dict[str, Any], fds: list[int], own: tuple[int, int]) -> None:
    zygote = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            control.close()
            for fd in own:
                os.close(fd)
            _become_task(libc, request, fds, zygote)
        except BaseException as exc:  # noqa: BLE001 (said on the task's stderr, which the run reports)
            with contextlib.suppress(OSError):
                os.write(2 if len(fds) < 2 else fds[1], f"The sandbox process could not start: {exc}\n".encode())
        finally:
            os._exit(70)
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)  # ours before anyone could reap it: the worker watches it
    try:
        _send(control, {"id": request["id"], "pid": pid}, [pidfd])
    finally:
        os.close(pidfd)


def _become_task(libc: Any, request: dict[str, Any], fds: list[int], zygote: int) -> None:
    """``A``: a session, the cgroup and the namespaces of one task; then ``B`` runs it."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.setsid()
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # the zygote (and so the worker) gone: so is this
    if os.getppid() != zygote:  # it went before the line above took effect
        os._exit(70)
    if request.get("cgroup_procs"):
        join_cgroup(request["cgroup_procs"])
    flags = _CLONE_NEWPID | _CLONE_NEWNS | (0 if request.get("network") else _CLONE_NEWNET)
    if libc.unshare(flags) != 0:
        raise OSError(ctypes.get_errno(), "unshare")
    child = os.fork()
    if child == 0:
        _run_task(libc, request, fds)
    # The pipes stay open here until A ends, as unshare keeps them: their end tells
    # the worker that the whole process is gone, not only B.
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    code = os.waitstatus_to_exitcode(status)
    if code < 0:  # end the way B ended, so the worker reads its signal (and no core file is left)
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        os._exit(128 - code)  # a signal whose default is to be ignored
    os._exit(code)


def _mount_own_proc(libc: Any) -> None:
    """In a new mount and PID namespace: keep mounts from propagating out, and show only our processes."""
    if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
    if libc.mount(b"proc", b"/proc", b"proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, None) != 0:
        raise OSError(ctypes.get_errno(), "mount /proc")


def _run_task(libc: Any, request: dict[str, Any], fds: list[int]) -> None:
    """``B``, PID 1 of the task's namespace: its own /proc, its pipes, its folder, then the runtime."""
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    _mount_own_proc(libc)
    stdout, stderr, result, config = (os.dup(fd) for fd in fds)  # above every target number
    for fd in fds:
        os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY)
    for source, target in ((null, 0), (stdout, 1), (stderr, 2), (result, RESULT_FD), (config, CONFIG_FD)):
        os.dup2(source, target)
    for fd in (null, stdout, stderr, result, config):
        if fd > CONFIG_FD:
            os.close(fd)
    os.closerange(CONFIG_FD + 1, 1 << 16)
    os.chdir(request["scratch"])
    os.environ.clear()  # the cell's environment, whole: nothing of the zygote's own
    os.environ.update(request["env"])
    tempfile.tempdir = None  # the zygote's guess must not outlive its environment
    with open(RULES_FILE) as fh:
        rules = json.load(fh)
    os.unlink(RULES_FILE)
    confine_files(rules)  # now, while it waits: a task's config finds it confined already
    rehearse()
    run_task(config_fd=CONFIG_FD)
