"""Whether a process still runs, and signals to process groups: shared by re-attach (is the submitting
kernel alive?), the devnet and the worker's sandboxes."""

from __future__ import annotations

import contextlib
import os


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (which may hold spaces); None off Linux or when gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def pid_alive(pid: int, stat: list[str] | None = None) -> bool:
    """Running, and not merely a zombie waiting for its parent to reap it.

    ``stat``: its ``proc_stat`` fields, when the caller has read them already.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed process its parent has not reaped yet still answers kill(pid, 0), but it is gone.
    if stat is None:
        stat = proc_stat(pid)
    return not stat or stat[0] != "Z"  # no /proc (macOS): trust kill()


def signal_group(pid: int, sig: int, leader: bool = False) -> None:
    """Send ``sig`` to the process group that ``pid`` leads (and with ``leader``, to ``pid`` itself).

    A group already gone, or one we may not signal, is no error: whoever signals it wants it gone.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    if leader:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)  # a process that left its group still gets the signal
