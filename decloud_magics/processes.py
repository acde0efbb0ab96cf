"""Whether a process still runs: shared by re-attach (is the submitting kernel alive?) and the devnet."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Running, and not merely a zombie waiting for its parent to reap it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed process its parent has not reaped yet still answers kill(pid, 0), but it is gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): trust kill()
