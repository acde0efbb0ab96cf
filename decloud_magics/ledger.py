"""The local ledger: every run and every event of a run, in one SQLite file.

How threads, processes and kernels share the file is in
:mod:`decloud_magics.ledger_file`, the tables and their migrations in
:mod:`decloud_magics.ledger_schema`, the run record and the storage shape of
each column in :mod:`decloud_magics.ledger_rows`.

The pandas views live in :mod:`decloud_magics.frames` and are imported only
when asked for, so importing the ledger stays cheap for the worker and the
server.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from .errors import UsageError
from .ledger_file import BUSY_TIMEOUT_S, LedgerFile
from .ledger_rows import RUN_COLUMNS, RunRecord, decode_run, encode_column, run_spent_wei, to_unix, wei_text
from .ledger_schema import SCHEMA_VERSION
from .models import FINAL_STATUSES, EventKind, RunEvent, Status

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["BUSY_TIMEOUT_S", "SCHEMA_VERSION", "Ledger", "RunRecord", "run_spent_wei"]

_UPDATABLE = frozenset(RUN_COLUMNS) - {"run_id"}
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


class Ledger(LedgerFile):
    """The SQLite ledger of runs, their events and a few settings.

    Safe to share between threads and between processes on one machine; see
    :mod:`decloud_magics.ledger_file` for how. Open it once per kernel and
    keep it.

    >>> ledger = Ledger(tmp_path / "ledger.sqlite")  # doctest: +SKIP
    >>> ledger.record_run(RunRecord("a3f09c", network="local", price_wei=10**15))  # doctest: +SKIP
    >>> ledger.find_run("a3f").price_wei  # doctest: +SKIP
    1000000000000000
    """

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r})"

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
        rows = [tuple(encode_column(c, getattr(run, c)) for c in RUN_COLUMNS) for run in runs]
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
        return decode_run(rows[0]) if rows else None

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
                return decode_run(rows[0])
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
        return [decode_run(row) for row in self.query(sql + " ORDER BY submitted_at, rowid", params)]

    def spent_wei(self, since: datetime | None = None, network: str | None = None) -> int:
        """Wei spent by runs submitted at or after ``since``: what the budget checks.

        Summed in Python because wei outgrows SQLite's integers; see
        :func:`run_spent_wei` for what each run counts.
        """
        sql = "SELECT status, task_id, price_wei, gas_cost_wei, refunded_wei FROM runs WHERE 1 = 1"
        params: list[Any] = []
        if since is not None:
            sql += " AND submitted_at >= ?"
            params.append(to_unix(since, "since"))
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
            to_unix(event.at, "at"),
            event.block,
            event.tx_hash,
            event.gas_used,
            wei_text(event.price_wei, "price_wei"),
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


def _update(conn: sqlite3.Connection, run_id: str, changes: Mapping[str, Any]) -> None:
    unknown = sorted(set(changes) - _UPDATABLE)
    if unknown:
        raise ValueError(
            f"The runs table has no column {', '.join(unknown)}: use one of {', '.join(sorted(_UPDATABLE))}."
        )
    # Column names come from the checked set above, never from the caller's text.
    assignments = ", ".join(f"{column} = ?" for column in changes)
    params = [encode_column(column, value) for column, value in changes.items()]
    cursor = conn.execute(f"UPDATE runs SET {assignments} WHERE run_id = ?", [*params, run_id])
    if cursor.rowcount == 0:
        raise UsageError(f"There is no run {run_id!r} in the ledger: record it before updating it.")
