"""One pids cgroup per sandbox process: a cap on its processes that binds root too.

RLIMIT_NPROC counts every process of the uid and does not bind root at all,
so where the worker may create cgroups (v1 ``pids``, or v2 with ``pids``
delegated) each sandbox process gets its own, named after the worker's pid so
that a later worker can sweep away those of one that died.

The sandbox process joins its cgroup while it waits as a warm spare: moving a
process into a cgroup waits for the kernel's RCU grace period, 7–10 ms here,
which would otherwise be paid by every task. The run's own limit is written
into ``pids.max`` when the task is handed over, unless the cgroup was made with it.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import shutil
import signal
import threading
import time

log = logging.getLogger(__name__)

_lock = threading.Lock()
_base: list[str | None] = []  # [the writable parent folder, or None], once probed
_counter = itertools.count(1)


def base() -> str | None:
    """The cgroup folder our sandboxes' cgroups are made in, or None where none can be made."""
    with _lock:
        if not _base:
            _base.append(_find_base())
        return _base[0]


def make(max_processes: int | None) -> str | None:
    """A new pids cgroup (its path), or None where none can be made."""
    parent = base()
    if parent is None:
        return None
    path = os.path.join(parent, f"decloud-{os.getpid()}-{next(_counter)}")
    try:
        os.mkdir(path)
        set_max(path, max_processes)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)
        return None
    return path


def procs_file(cgroup: str) -> str:
    """The file a process writes its pid into to join the cgroup."""
    return os.path.join(cgroup, "cgroup.procs")


def set_max(cgroup: str, max_processes: int | None) -> None:
    with open(os.path.join(cgroup, "pids.max"), "w") as fh:
        fh.write(str(max_processes) if max_processes else "max")


def limit_hit(cgroup: str) -> bool:
    """Whether the kernel refused a fork because of ``pids.max``."""
    try:
        with open(os.path.join(cgroup, "pids.events")) as fh:
            return any(line.split()[:1] == ["max"] and line.split()[1:] != ["0"] for line in fh)
    except OSError:
        return False


def kill_all(cgroup: str) -> None:
    """SIGKILL every process in the cgroup: reaches a setsid'd child when there is no PID namespace."""
    try:
        with open(procs_file(cgroup)) as fh:
            pids = [int(pid) for pid in fh.read().split()]
    except OSError:
        return
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def remove(cgroup: str) -> None:
    """Kill what is still inside, then remove it."""
    for _ in range(100):  # processes killed a moment ago may still be exiting
        try:
            kill_all(cgroup)
            os.rmdir(cgroup)
            return
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return
            time.sleep(0.02)
    log.warning("could not remove the sandbox cgroup %s", cgroup)


def _find_base() -> str | None:
    try:
        with open("/proc/self/cgroup") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _id, controllers, path = line.split(":", 2)
        if "pids" in controllers.split(","):  # cgroup v1
            parent = os.path.join("/sys/fs/cgroup/pids", path.lstrip("/"))
        elif controllers == "":  # cgroup v2: only if pids is delegated to our children
            parent = os.path.join("/sys/fs/cgroup", path.lstrip("/"))
            try:
                with open(os.path.join(parent, "cgroup.subtree_control")) as fh:
                    if "pids" not in fh.read().split():
                        continue
            except OSError:
                continue
        else:
            continue
        if os.access(parent, os.W_OK):
            return parent
    return None
