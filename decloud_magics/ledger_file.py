"""The SQLite file behind the ledger, shared by threads and processes.

The history DataFrames, the budget check, kernel-restart recovery and the
Jupyter server extension all read this file, and the notebook thread, a
watcher thread, worker threads and a second kernel may write it at the same
moment. So:

- WAL journal: readers never block the writer and the writer never blocks
  readers, so the side panel can poll while a run is being recorded.
- A busy timeout: a writer that finds the file locked waits its turn instead
  of failing with "database is locked".
- Every write is one ``BEGIN IMMEDIATE`` transaction: the writer takes the
  write lock before it reads anything, so it never has to upgrade a read
  snapshot to a write, which SQLite refuses without calling the busy handler.
- One connection per thread (and per process, so a forked child never reuses
  its parent's): an sqlite3 connection is not safe to share mid-transaction.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import ConfigError
from .ledger_schema import MIGRATIONS, SCHEMA_VERSION
from .paths import decloud_home

if TYPE_CHECKING:
    from typing import Self  # 3.11+, and only annotations need it

__all__ = ["BUSY_TIMEOUT_S", "LedgerFile"]

_T = TypeVar("_T")

#: How long a writer queues behind another writer before giving up. Writes are
#: a few rows each, so ten seconds only runs out if something is badly stuck.
BUSY_TIMEOUT_S = 10.0


class LedgerFile:
    """One ledger file: a connection per thread, write transactions, read snapshots.

    :class:`~decloud_magics.ledger.Ledger` builds its runs, events and
    settings on this; the file is created and migrated on first use.
    """

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else decloud_home() / "ledger.sqlite"
        self._local = threading.local()
        self._lock = threading.Lock()
        # Every connection this object opened, with its thread and process,
        # so close() can close them all and dead threads' ones get closed.
        self._connections: list[tuple[threading.Thread, int, sqlite3.Connection]] = []
        self._schema_ready = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection this process opened.

        Call it when no other thread is using the ledger any more; the ledger
        reopens on its next use.
        """
        with self._lock:
            connections, self._connections = self._connections, []
            self._local = threading.local()
        for _, pid, conn in connections:
            if pid == os.getpid():  # a forked child must not touch its parent's handles
                conn.close()

    # -- connections and transactions -------------------------------------

    def _conn(self) -> sqlite3.Connection:
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid():
            conn = self._open()
            local.conn, local.pid = conn, os.getpid()
        return conn

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: the module must not open transactions behind
        # our back; _write() says exactly where each one starts and ends.
        # check_same_thread=False so close() can close every thread's
        # connection, and so a snapshot() can be lent to one helper thread;
        # no two threads ever use a connection at the same time.
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            # Where WAL cannot work (some network file systems) SQLite keeps
            # its rollback journal: slower for readers, still correct.
            _while_locked(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())
            # In WAL mode NORMAL never corrupts the file; only a power cut can
            # drop the last commits, and a kernel crash loses nothing. FULL
            # would fsync on every event, which the watcher writes often.
            conn.execute("PRAGMA synchronous = NORMAL")
            with self._lock:
                if not self._schema_ready:
                    self._migrate(conn)
                    self._schema_ready = True
                self._forget_dead_threads()
                self._connections.append((threading.current_thread(), os.getpid(), conn))
        except sqlite3.DatabaseError as exc:
            conn.close()
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            raise ConfigError(
                f"{self.path} is not a readable decloud ledger ({exc}): "
                "move it aside and decloud will start a new one."
            ) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _forget_dead_threads(self) -> None:
        # A kernel starts a watcher thread per run; without this each would
        # leave an open file handle behind until close(). Called with the lock.
        kept = []
        for thread, pid, conn in self._connections:
            if pid != os.getpid():
                continue  # inherited through fork: not ours to close
            if thread.is_alive():
                kept.append((thread, pid, conn))
            else:
                conn.close()
        self._connections = kept

    def _migrate(self, conn: sqlite3.Connection) -> None:
        if _user_version(conn) == SCHEMA_VERSION:
            return
        with _transaction(conn):
            # Read again under the write lock: another kernel may have just
            # created the tables.
            version = _user_version(conn)
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"{self.path} was written by a newer decloud (ledger version {version}, "
                    f"this one knows {SCHEMA_VERSION}): upgrade decloud to read it."
                )
            for statements in MIGRATIONS[version:]:
                for statement in statements:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with _transaction(self._conn()) as conn:
            yield conn

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Raw rows of a read-only query, for views that want their own shape.

        :mod:`decloud_magics.frames` and the server extension read through
        this, so they share the ledger's connections and schema set-up.
        """
        return self._conn().execute(sql, params).fetchall()

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection inside one read transaction, for read-only queries.

        Every query made on it until the block ends sees the same state of
        the file, whatever other connections commit meanwhile, so a view
        built from several queries is consistent. The caller may lend the
        connection to one other thread, as long as the two never use it at
        the same time.
        """
        conn = self._conn()
        if conn.in_transaction:  # already inside one: that one's snapshot holds
            yield conn
            return
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")  # nothing was written; this only lets the snapshot go


# -- helpers ---------------------------------------------------------------


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _while_locked(action: Callable[[], _T], timeout: float = BUSY_TIMEOUT_S) -> _T:
    """Retry ``action`` while the file is locked.

    Switching a new file to WAL needs an exclusive lock, and SQLite may refuse
    that at once instead of calling the busy handler, e.g. when two kernels
    create the ledger at the same moment.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return action()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])
