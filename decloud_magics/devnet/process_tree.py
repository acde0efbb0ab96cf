"""The processes the devnet started, as Linux shows them: start times and children from /proc, and
signals sent to whole process groups (each node and worker leads a session of its own)."""

from __future__ import annotations

import contextlib
import os


def signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group that ``pid`` leads, and to ``pid`` itself."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)  # a process that left its group still gets the signal


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (which may hold spaces); None off Linux."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot; None off Linux or when no such process runs."""
    stat = _proc_stat(pid)
    return int(stat[19]) if stat else None


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, by parent links in /proc (Linux; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            stat = _proc_stat(int(name)) if name.isdigit() else None
            if stat:
                children.setdefault(int(stat[1]), []).append(int(name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
