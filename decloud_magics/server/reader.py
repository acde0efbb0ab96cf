"""Read-only queries over the ledger file, shaped for the REST API.

The server shares the ledger with running kernels and their watcher
threads. It opens the file with SQLite's ``mode=ro`` rather than through
:class:`~decloud_magics.ledger.Ledger`, whose connections may migrate or
create the file: the server can then never write to it, never create an
empty ledger before the first kernel does, and never hold a write lock a
kernel would have to wait for. In WAL mode each new read transaction sees
the latest commit, so polling shows runs as they are recorded.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DecloudError
from ..ledger_file import BUSY_TIMEOUT_S
from ..ledger_rows import run_spent_wei
from ..models import FINAL_STATUSES, Status, utcnow
from .models import (
    EventModel,
    RunDetailModel,
    RunListModel,
    RunModel,
    RunsQuery,
    SpendingModel,
    SummaryModel,
    coin_text,
    iso_time,
)

__all__ = ["LedgerReader"]

#: The symbol shown when a run's network is no longer configured.
DEFAULT_UNIT = "ETH"

_RUN_SELECT = (
    "run_id", "name", "network", "status", "task_id", "submitted_at", "started_at", "completed_at",
    "price_wei", "gas_used", "gas_cost_wei", "refunded_wei", "worker", "input_cid", "result_cid", "error",
)  # fmt: skip
_EVENT_SELECT = ("kind", "at", "block", "tx_hash", "gas_used", "price_wei", "worker", "message")
_SUMMARY_SELECT = (
    "network", "status", "task_id", "price_wei", "gas_cost_wei", "refunded_wei", "submitted_at", "completed_at",
)  # fmt: skip
_FINAL_VALUES = frozenset(s.value for s in FINAL_STATUSES)


@dataclass
class _Spending:
    hour: int = 0
    today: int = 0
    total: int = 0


@dataclass
class LedgerReader:
    """Answers the REST API's questions from the ledger at ``path``, never writing it.

    Every call opens its own short-lived connection, so calls may run on any
    thread (the handlers use a worker thread to keep the server's loop free).
    """

    path: Path

    def runs(self, query: RunsQuery) -> RunListModel:
        """The newest runs matching ``query``, and how many match in all."""
        where, params = _where(query)
        with self._connect() as conn:
            if conn is None:
                return {"runs": [], "total": 0}
            conn.execute("BEGIN")  # one snapshot: the total counts the runs listed
            (total,) = conn.execute(f"SELECT COUNT(*) FROM runs{where}", params).fetchone()
            rows = conn.execute(
                f"SELECT {', '.join(_RUN_SELECT)} FROM runs{where}"
                " ORDER BY submitted_at DESC, rowid DESC LIMIT ?",
                [*params, query.limit],
            ).fetchall()
            conn.execute("COMMIT")
        units = self._units()
        return {"runs": [_run_model(row, units) for row in rows], "total": int(total)}

    def run(self, run_id: str) -> RunDetailModel | None:
        """One run with every event it recorded, or None for an id the ledger lacks."""
        with self._connect() as conn:
            if conn is None:
                return None
            # One read transaction, so the events agree with the run's status.
            conn.execute("BEGIN")
            row = conn.execute(
                f"SELECT {', '.join(_RUN_SELECT)} FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            events = conn.execute(
                f"SELECT {', '.join(_EVENT_SELECT)} FROM events WHERE run_id = ? ORDER BY at, id", (run_id,)
            ).fetchall()
            conn.execute("COMMIT")
        if row is None:
            return None
        return {"run": _run_model(row, self._units()), "events": [_event_model(e) for e in events]}

    def summary(self, now: datetime | None = None) -> SummaryModel:
        """Counts by status and spending per network, counted as the budget counts it.

        Summed in Python because wei outgrows SQLite's integers.
        """
        now = now or utcnow()
        hour_ago = (now - timedelta(hours=1)).timestamp()
        midnight = now.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
        statuses = {s.value: 0 for s in Status}
        spending: dict[str | None, _Spending] = {}
        durations: list[float] = []
        with self._connect() as conn:
            rows = [] if conn is None else conn.execute(f"SELECT {', '.join(_SUMMARY_SELECT)} FROM runs")
            for network, status, task_id, price, gas_cost, refunded, submitted, completed in rows:
                statuses[status] = statuses.get(status, 0) + 1
                spent = run_spent_wei(status, task_id, price, gas_cost, refunded)
                bucket = spending.setdefault(network, _Spending())
                bucket.total += spent
                bucket.today += spent if submitted >= midnight else 0
                bucket.hour += spent if submitted >= hour_ago else 0
                if status == Status.COMPLETED.value and completed is not None:
                    durations.append(completed - submitted)
        units = self._units()
        return {
            "runs": sum(statuses.values()),
            "in_flight": sum(n for s, n in statuses.items() if s not in _FINAL_VALUES),
            "statuses": statuses,
            "mean_duration_s": sum(durations) / len(durations) if durations else None,
            "spending": [
                _spending_model(network, units, spent)
                for network, spent in sorted(spending.items(), key=lambda item: item[0] or "")
            ],
            "as_of": now.astimezone(timezone.utc).isoformat(timespec="microseconds"),
        }

    # -- helpers -----------------------------------------------------------

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection | None]:
        """A read-only connection, or None while no kernel has created the ledger yet."""
        path = self.path.expanduser().resolve()
        if not path.is_file():
            yield None
            return
        try:
            conn = sqlite3.connect(
                f"{path.as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None
            )
        except sqlite3.Error as exc:
            raise ConfigError(f"The ledger {path} cannot be opened for reading ({exc}).") from exc
        try:
            # The ledger sets user_version in the transaction that creates its
            # tables: version 0 is a file a kernel is creating right now.
            created = conn.execute("PRAGMA user_version").fetchone()[0] > 0
            yield conn if created else None
        except sqlite3.DatabaseError as exc:
            raise ConfigError(
                f"The ledger {path} could not be read ({exc}): if it is damaged, move it aside "
                "and decloud will start a new one."
            ) from exc
        finally:
            conn.close()

    def _units(self) -> dict[str, str]:
        """Coin symbol per configured network; read per request, since users add networks."""
        try:
            from ..networks import list_networks

            return {name: config.symbol for name, config in list_networks().items()}
        except DecloudError:
            return {}  # a broken networks file must not hide the run history


def _where(query: RunsQuery) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if query.network is not None:
        clauses.append("network = ?")
        params.append(query.network)
    if query.statuses:
        clauses.append(f"status IN ({', '.join('?' * len(query.statuses))})")
        params.extend(s.value for s in query.statuses)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _run_model(row: tuple[Any, ...], units: dict[str, str]) -> RunModel:
    (run_id, name, network, status, task_id, submitted, started, completed,
     price, gas_used, gas_cost, refunded, worker, input_cid, result_cid, error) = row  # fmt: skip
    price_wei, gas_cost_wei = int(price or 0), int(gas_cost or 0)
    return {
        "id": run_id,
        "name": name,
        "network": network,
        "unit": units.get(network or "", DEFAULT_UNIT),
        "status": status,
        "final": status in _FINAL_VALUES,
        "task_id": task_id,
        "submitted_at": iso_time(submitted) or "",
        "started_at": iso_time(started),
        "completed_at": iso_time(completed),
        "duration_s": None if completed is None else completed - submitted,
        "price": coin_text(price_wei),
        "gas_used": gas_used,
        "gas_cost": coin_text(gas_cost_wei),
        "total_cost": coin_text(price_wei + gas_cost_wei),
        "refunded": None if refunded is None else coin_text(int(refunded)),
        "worker": worker,
        "input_cid": input_cid,
        "result_cid": result_cid,
        "error": error,
    }


def _event_model(row: tuple[Any, ...]) -> EventModel:
    kind, at, block, tx_hash, gas_used, price, worker, message = row
    return {
        "kind": kind,
        "at": iso_time(at) or "",
        "block": block,
        "tx_hash": tx_hash,
        "gas_used": gas_used,
        "price": coin_text(int(price or 0)),
        "worker": worker,
        "message": message or "",
    }


def _spending_model(network: str | None, units: dict[str, str], spent: _Spending) -> SpendingModel:
    return {
        "network": network,
        "unit": units.get(network or "", DEFAULT_UNIT),
        "hour": coin_text(spent.hour),
        "today": coin_text(spent.today),
        "total": coin_text(spent.total),
    }
