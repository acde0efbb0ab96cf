"""One exception family; every message is a sentence a user can act on.

The messages never contain key material: exceptions that wrap lower-level
errors keep only their type and a scrubbed message (see ``keys.redact``).
"""

from __future__ import annotations


class DecloudError(Exception):
    """Base of every error decloud raises on purpose."""


class UsageError(DecloudError, ValueError):
    """A wrong option or argument given by the user."""


class ConfigError(DecloudError):
    """A network, key or setting that is missing or malformed."""


class NetworkUnreachable(DecloudError):
    """The chain node or the IPFS node did not answer."""


class StoreError(DecloudError):
    """A content store failed to keep or return bytes."""


class ContentNotFound(StoreError, KeyError):
    """The store has no block for this CID."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "content not found"


class IntegrityError(StoreError):
    """Bytes did not match the digest they were addressed or recorded by."""


class SerializationError(DecloudError):
    """A value cannot be sent to a worker or back to the notebook."""


class UnsafeValueError(SerializationError):
    """A worker returned a value that only pickle could restore, and pickle was not trusted."""


class InsufficientFunds(DecloudError):
    """The wallet cannot pay the price plus gas."""


class BudgetExceeded(DecloudError):
    """The run would take spending past the user's budget."""


class ChainError(DecloudError):
    """A transaction was refused or the contract is not where the config says."""


class RunFailed(DecloudError):
    """The run ended without a usable result (failed, not processed, cancelled, disputed)."""


class RunTimeout(DecloudError, TimeoutError):
    """Waiting for a run took longer than the caller allowed."""


class RemoteError(RunFailed):
    """The cell raised on the worker; carries the remote traceback."""

    def __init__(self, ename: str, evalue: str, traceback: list[str]) -> None:
        super().__init__(f"{ename}: {evalue}")
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback


def _one_line(self: DecloudError) -> list[str]:
    """IPython shows this instead of our internal frames: the sentence is the message."""
    return [f"{type(self).__name__}: {self}"]


def _remote_lines(self: RemoteError) -> list[str]:
    """Shown like a local exception: the remote traceback of the user's code, then the error."""
    lines = [line.rstrip("\n") for line in self.traceback]
    if not lines or not lines[-1].startswith(self.ename):
        lines.append(f"{self.ename}: {self.evalue}")
    return lines


DecloudError._render_traceback_ = _one_line  # type: ignore[attr-defined]
RemoteError._render_traceback_ = _remote_lines  # type: ignore[attr-defined]
