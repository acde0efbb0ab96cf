"""The local ledger: every run and every event of a run, in one SQLite file.

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

Storage shapes: money is the decimal text of integer wei, because wei
outgrows SQLite's 64-bit integers; time is float unix seconds in UTC, which
keeps microseconds and sorts and compares cheaply in SQL.

The pandas views live in :mod:`decloud_magics.frames` and are imported only
when asked for, so importing the ledger stays cheap for the worker and the
server.
"""

from __future__ import annotations

import json
import operator
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import ConfigError, UsageError
from .models import FINAL_STATUSES, EventKind, RunEvent, Status, utcnow
from .paths import decloud_home

if TYPE_CHECKING:
    from typing import Self  # 3.11+, and only annotations need it

    import pandas as pd

__all__ = ["SCHEMA_VERSION", "Ledger", "RunRecord", "run_spent_wei"]

_T = TypeVar("_T")

#: Bumped whenever the tables change; ``_MIGRATIONS`` carries an old file forward.
SCHEMA_VERSION = 1

#: How long a writer queues behind another writer before giving up. Writes are
#: a few rows each, so ten seconds only runs out if something is badly stuck.
BUSY_TIMEOUT_S = 10.0

# _MIGRATIONS[n] holds the statements that take a file from version n to n + 1.
# Plain statements rather than executescript(), which would commit the
# migration's transaction half-way.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE runs (
            run_id TEXT PRIMARY KEY,
            name TEXT,
            network TEXT,
            task_id INTEGER,
            contract TEXT,
            requester TEXT,
            status TEXT NOT NULL,
            submitted_at REAL NOT NULL,
            started_at REAL,
            completed_at REAL,
            price_wei TEXT NOT NULL DEFAULT '0',
            gas_used INTEGER,
            gas_cost_wei TEXT,
            worker TEXT,
            input_cid TEXT,
            result_cid TEXT,
            result_digest TEXT,
            error TEXT,
            cell_hash TEXT,
            code TEXT,
            outputs TEXT NOT NULL DEFAULT '[]',
            options TEXT NOT NULL DEFAULT '{}',
            refunded_wei TEXT,
            validators INTEGER,
            deadline REAL
        )
        """,
        "CREATE INDEX runs_submitted_at ON runs (submitted_at)",
        "CREATE INDEX runs_status ON runs (status)",
        "CREATE INDEX runs_network ON runs (network)",
        """
        CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            at REAL NOT NULL,
            block INTEGER,
            tx_hash TEXT,
            gas_used INTEGER,
            price_wei TEXT,
            worker TEXT,
            message TEXT,
            data TEXT
        )
        """,
        "CREATE INDEX events_run_id ON events (run_id)",
        "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ),
)
assert len(_MIGRATIONS) == SCHEMA_VERSION


@dataclass
class RunRecord:
    """One row of the ``runs`` table, in Python types.

    Money is integer wei and times are timezone-aware UTC datetimes, so code
    that compares or adds them never meets text or naive times. Field order is
    the column order.
    """

    run_id: str
    name: str | None = None
    network: str | None = None
    task_id: int | None = None
    contract: str | None = None
    requester: str | None = None
    status: Status = Status.CREATED
    submitted_at: datetime = field(default_factory=utcnow)
    started_at: datetime | None = None
    completed_at: datetime | None = None
    price_wei: int = 0
    gas_used: int | None = None
    gas_cost_wei: int | None = None
    worker: str | None = None
    input_cid: str | None = None
    result_cid: str | None = None
    result_digest: str | None = None
    error: str | None = None
    cell_hash: str | None = None
    code: str | None = None
    outputs: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    refunded_wei: int | None = None
    validators: int | None = None
    deadline: datetime | None = None

    def __post_init__(self) -> None:
        # Callers often hold the status as text (from JSON, from the chain
        # client); keep the record's promise that it is a Status.
        self.status = Status(self.status)

    @property
    def is_final(self) -> bool:
        """True once the run can no longer change on chain."""
        return self.status.is_final

    @property
    def spent_wei(self) -> int:
        """What this run costs the budget now; see :func:`run_spent_wei`."""
        return run_spent_wei(self.status, self.task_id, self.price_wei, self.gas_cost_wei, self.refunded_wei)


RUN_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(RunRecord))
_UPDATABLE = frozenset(RUN_COLUMNS) - {"run_id"}
_TIME_COLUMNS = frozenset({"submitted_at", "started_at", "completed_at", "deadline"})
_WEI_COLUMNS = frozenset({"price_wei", "gas_cost_wei", "refunded_wei"})
_INT_COLUMNS = frozenset({"task_id", "gas_used", "validators"})
_JSON_COLUMNS = frozenset({"outputs", "options"})
_NOT_NULL = frozenset({"status", "submitted_at", "price_wei", "outputs", "options"})
_FINAL_VALUES = tuple(sorted(s.value for s in FINAL_STATUSES))
_EVENT_COLUMNS = (
    "run_id", "kind", "at", "block", "tx_hash", "gas_used", "price_wei", "worker", "message", "data",
)  # fmt: skip
_SELECT_RUNS = f"SELECT {', '.join(RUN_COLUMNS)} FROM runs"
_INSERT_RUN = f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({', '.join('?' * len(RUN_COLUMNS))})"
_INSERT_EVENT = (
    f"INSERT INTO events ({', '.join(_EVENT_COLUMNS)}) VALUES ({', '.join('?' * len(_EVENT_COLUMNS))})"
)
_NOT_FINAL = f"status NOT IN ({', '.join(repr(v) for v in _FINAL_VALUES)})"


def run_spent_wei(
    status: Status | str,
    task_id: int | None,
    price_wei: int | str | None,
    gas_cost_wei: int | str | None,
    refunded_wei: int | str | None,
) -> int:
    """What one run costs the budget, in wei.

    Gas is always spent. The price counts while it sits in escrow (a run in
    flight reserves its price, so two quick submissions cannot both slip
    under the budget) and after it was paid out, but not the part the chain
    gave back (``refunded_wei``, set when a cancelled, not-processed or
    disputed task returned its escrow), and not at all for a run that ended
    before it reached the chain (no ``task_id``: nothing was ever escrowed).
    """
    gas = int(gas_cost_wei or 0)
    if Status(status).is_final and task_id is None:
        return gas
    price = int(price_wei or 0)
    refunded = min(int(refunded_wei or 0), price)
    return gas + price - refunded


class Ledger:
    """The SQLite ledger of runs, their events and a few settings.

    Safe to share between threads and between processes on one machine; see
    the module docstring for how. Open it once per kernel and keep it.

    >>> ledger = Ledger(tmp_path / "ledger.sqlite")  # doctest: +SKIP
    >>> ledger.record_run(RunRecord("a3f09c", network="local", price_wei=10**15))  # doctest: +SKIP
    >>> ledger.find_run("a3f").price_wei  # doctest: +SKIP
    1000000000000000
    """

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else decloud_home() / "ledger.sqlite"
        self._local = threading.local()
        self._lock = threading.Lock()
        # Every connection this object opened, with its thread and process,
        # so close() can close them all and dead threads' ones get closed.
        self._connections: list[tuple[threading.Thread, int, sqlite3.Connection]] = []
        self._schema_ready = False

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r})"

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
            for statements in _MIGRATIONS[version:]:
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

    # -- runs -------------------------------------------------------------

    def record_run(self, run: RunRecord) -> None:
        """Insert a new run. A run id already in the ledger is a ValueError."""
        try:
            self._insert_runs([run])
        except sqlite3.IntegrityError:
            raise ValueError(
                f"Run {run.run_id!r} is already in the ledger: use update_run() to change it."
            ) from None

    def record_runs(self, runs: Iterable[RunRecord]) -> int:
        """Insert many runs in one transaction (imports, benchmarks); returns how many.

        All or nothing: if one row is refused, none is written.
        """
        try:
            return self._insert_runs(runs)
        except sqlite3.IntegrityError as exc:
            raise ValueError(f"A run id is already in the ledger, or given twice ({exc}).") from exc

    def _insert_runs(self, runs: Iterable[RunRecord]) -> int:
        # Encode everything before taking the write lock, so a bad value
        # never makes the other writers wait.
        rows = [tuple(_encode(c, getattr(run, c)) for c in RUN_COLUMNS) for run in runs]
        with self._write() as conn:
            conn.executemany(_INSERT_RUN, rows)
        return len(rows)

    def update_run(self, run_id: str, /, **fields: Any) -> None:
        """Change some columns of one run, e.g. ``update_run(rid, status=Status.RUNNING)``.

        Only column names of the ``runs`` table are accepted, so a typo is a
        ValueError rather than a silently lost update; an unknown run id is a
        UsageError.
        """
        if not fields:
            return
        with self._write() as conn:
            _update(conn, run_id, fields)

    def get_run(self, run_id: str) -> RunRecord | None:
        """The run with exactly this id, or None."""
        rows = self.query(f"{_SELECT_RUNS} WHERE run_id = ?", (run_id,))
        return _decode_run(rows[0]) if rows else None

    def find_run(self, prefix: str) -> RunRecord:
        """The one run whose id starts with ``prefix``, as users type short ids.

        Raises UsageError, with a sentence saying what to do, when no run or
        more than one run matches.
        """
        typed = prefix.strip() if isinstance(prefix, str) else ""
        if not typed:
            raise UsageError("Give a run id, or the first few characters of one.")
        for candidate in dict.fromkeys((typed, typed.lower())):  # ids are lowercase hex; users may not be
            exact = self.get_run(candidate)
            if exact is not None:
                return exact
            # A range on the primary key uses its index, unlike LIKE or substr().
            rows = self.query(
                f"{_SELECT_RUNS} WHERE run_id >= ? AND run_id < ? ORDER BY run_id LIMIT 6",
                (candidate, candidate + "\U0010ffff"),
            )
            if len(rows) == 1:
                return _decode_run(rows[0])
            if rows:
                shown = ", ".join(row[0] for row in rows[:5]) + (", …" if len(rows) > 5 else "")
                raise UsageError(
                    f"'{typed}' matches more than one run ({shown}): type more characters of the id."
                )
        raise UsageError(f"No run id starts with '{typed}': list the runs with history() to find it.")

    find_runs = find_run  # the name the first design used; same lookup

    def runs_in_flight(self, network: str | None = None) -> list[RunRecord]:
        """Runs not yet final, oldest first: what to re-attach to after a kernel restart."""
        sql = f"{_SELECT_RUNS} WHERE {_NOT_FINAL}"
        params: list[Any] = []
        if network is not None:
            sql += " AND network = ?"
            params.append(network)
        return [_decode_run(row) for row in self.query(sql + " ORDER BY submitted_at, rowid", params)]

    def spent_wei(self, since: datetime | None = None, network: str | None = None) -> int:
        """Wei spent by runs submitted at or after ``since``: what the budget checks.

        Summed in Python because wei outgrows SQLite's integers; see
        :func:`run_spent_wei` for what each run counts.
        """
        sql = "SELECT status, task_id, price_wei, gas_cost_wei, refunded_wei FROM runs WHERE 1 = 1"
        params: list[Any] = []
        if since is not None:
            sql += " AND submitted_at >= ?"
            params.append(_to_unix(since, "since"))
        if network is not None:
            sql += " AND network = ?"
            params.append(network)
        return sum(run_spent_wei(*row) for row in self.query(sql, params))

    # -- events -----------------------------------------------------------

    def add_event(self, event: RunEvent, /, **run_fields: Any) -> None:
        """Append one event of a run; money is stored as wei text.

        ``run_fields`` (as for :meth:`update_run`) are applied to the run in
        the same transaction, so a crash never leaves an event recorded
        without the status it implies.
        """
        row = (
            event.run_id,
            EventKind(event.kind).value,
            _to_unix(event.at, "at"),
            event.block,
            event.tx_hash,
            event.gas_used,
            _wei_text(event.price_wei, "price_wei"),
            event.worker,
            event.message,
            json.dumps(event.data, default=str),  # data is informational; never fail a run over it
        )
        with self._write() as conn:
            conn.execute(_INSERT_EVENT, row)
            if run_fields:
                _update(conn, event.run_id, run_fields)

    def events(self, run_id: str) -> list[RunEvent]:
        """Every event of one run, in the order they happened."""
        rows = self.query(
            f"SELECT {', '.join(_EVENT_COLUMNS)} FROM events WHERE run_id = ? ORDER BY at, id",
            (run_id,),
        )
        return [
            RunEvent(
                kind=EventKind(kind),
                run_id=rid,
                at=datetime.fromtimestamp(at, timezone.utc),
                block=block,
                tx_hash=tx_hash,
                gas_used=gas_used or 0,
                price_wei=int(price or 0),
                worker=worker,
                message=message or "",
                data=json.loads(data) if data else {},
            )
            for rid, kind, at, block, tx_hash, gas_used, price, worker, message, data in rows
        ]

    # -- settings ---------------------------------------------------------

    def set_setting(self, key: str, value: Any) -> None:
        """Keep a JSON-able value under ``key`` (the budget lives here)."""
        text = json.dumps(value)
        with self._write() as conn:
            conn.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, text),
            )

    def get_setting(self, key: str, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default`` when there is none."""
        rows = self.query("SELECT value FROM settings WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else default

    # -- pandas views (imported on first use) -----------------------------

    def history_frame(
        self,
        network: str | None = None,
        status: Status | str | Iterable[Status | str] | None = None,
        since: datetime | timedelta | str | None = None,
        limit: int | None = None,
    ) -> pd.DataFrame:
        """One row per run, newest first; see :func:`decloud_magics.frames.history_frame`."""
        from .frames import history_frame

        return history_frame(self, network=network, status=status, since=since, limit=limit)

    def events_frame(self, run_id: str) -> pd.DataFrame:
        """One row per event of a run; see :func:`decloud_magics.frames.events_frame`."""
        from .frames import events_frame

        return events_frame(self, run_id)

    def summary_frame(self, now: datetime | None = None, network: str | None = None) -> pd.DataFrame:
        """Counts and spending in one row; see :func:`decloud_magics.frames.summary_frame`."""
        from .frames import summary_frame

        return summary_frame(self, now=now, network=network)


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


def _update(conn: sqlite3.Connection, run_id: str, changes: Mapping[str, Any]) -> None:
    unknown = sorted(set(changes) - _UPDATABLE)
    if unknown:
        raise ValueError(
            f"The runs table has no column {', '.join(unknown)}: use one of {', '.join(sorted(_UPDATABLE))}."
        )
    # Column names come from the checked set above, never from the caller's text.
    assignments = ", ".join(f"{column} = ?" for column in changes)
    params = [_encode(column, value) for column, value in changes.items()]
    cursor = conn.execute(f"UPDATE runs SET {assignments} WHERE run_id = ?", [*params, run_id])
    if cursor.rowcount == 0:
        raise UsageError(f"There is no run {run_id!r} in the ledger: record it before updating it.")


def _encode(column: str, value: Any) -> Any:
    """A RunRecord value in its storage shape, refusing what would store wrongly."""
    if value is None:
        if column in _NOT_NULL:
            raise ValueError(f"{column} cannot be None.")
        return None
    if column in _TIME_COLUMNS:
        return _to_unix(value, column)
    if column in _WEI_COLUMNS:
        return _wei_text(value, column)
    if column in _INT_COLUMNS:
        return operator.index(value)
    if column in _JSON_COLUMNS:
        return json.dumps(value)
    if column == "status":
        return Status(value).value
    if not isinstance(value, str):
        raise TypeError(f"{column} takes text, not {type(value).__name__}.")
    return value


def _decode_run(row: Sequence[Any]) -> RunRecord:
    values = dict(zip(RUN_COLUMNS, row))
    for column in _TIME_COLUMNS:
        values[column] = _from_unix(values[column])
    for column in _WEI_COLUMNS:
        values[column] = None if values[column] is None else int(values[column])
    for column in _JSON_COLUMNS:
        values[column] = json.loads(values[column])
    values["status"] = Status(values["status"])
    return RunRecord(**values)


def _to_unix(value: datetime, what: str) -> float:
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime, not {type(value).__name__}.")
    if value.tzinfo is None or value.utcoffset() is None:
        # A naive time would be read as the machine's local time: refuse it
        # rather than store an hour-shifted run.
        raise ValueError(f"{what} must be timezone-aware (e.g. models.utcnow()), not a naive datetime.")
    return value.timestamp()


def _from_unix(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, timezone.utc)


def _wei_text(value: Any, what: str) -> str:
    if isinstance(value, bool):
        raise TypeError(f"{what} must be integer wei, not a bool.")
    wei = operator.index(value)  # refuses floats and Decimals: money is never rounded here
    if wei < 0:
        raise ValueError(f"{what} must be zero or more wei, not {wei}.")
    return str(wei)
