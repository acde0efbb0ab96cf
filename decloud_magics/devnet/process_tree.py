"""The processes the devnet started, as Linux shows them: start times and children from /proc, and
signals sent to whole process groups (each node and worker leads a session of its own)."""

from __future__ import annotations

import contextlib
import os

from .. import processes
from ..processes import proc_stat


def signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group that ``pid`` leads, and to ``pid`` itself."""
    processes.signal_group(pid, sig, leader=True)


def start_ticks(pid: int, stat: list[str] | None = None) -> int | None:
    """When ``pid`` started, in clock ticks since boot; None off Linux or when no such process runs.

    ``stat``: its ``proc_stat`` fields, when the caller has read them already.
    """
    if stat is None:
        stat = proc_stat(pid)
    return int(stat[19]) if stat else None


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, by parent links in /proc (Linux; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            stat = proc_stat(int(name)) if name.isdigit() else None
            if stat:
                children.setdefault(int(stat[1]), []).append(int(name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
