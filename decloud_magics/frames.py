"""pandas views of the ledger: the run history, one run's events, a summary.

Apart from :mod:`decloud_magics.ledger` so that importing the ledger (the
worker, the budget check, the server's REST handlers) never pays for pandas;
the ledger's ``*_frame`` methods import this module on first use.

Every view keeps the ledger's promises: times are timezone-aware UTC, money
is ``decimal.Decimal`` ether (exact, never float), and missing counts are a
nullable ``Int64`` rather than floats with NaN.
"""

from __future__ import annotations

import decimal
import itertools
import json
import re
import sqlite3
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .errors import UsageError
from .models import FINAL_STATUSES, Status, utcnow
from .units import wei_to_decimal

if TYPE_CHECKING:
    from .ledger import Ledger

__all__ = [
    "EVENT_COLUMNS",
    "HISTORY_COLUMNS",
    "SUMMARY_COLUMNS",
    "events_frame",
    "history_frame",
    "parse_since",
    "summary_frame",
]

HISTORY_COLUMNS: tuple[str, ...] = (
    "run_id", "name", "network", "status", "submitted_at", "started_at", "completed_at", "duration_s",
    "price", "gas_used", "gas_cost", "total_cost", "worker", "input_cid", "result_cid", "error", "cell_hash",
)  # fmt: skip
EVENT_COLUMNS: tuple[str, ...] = (
    "run_id", "kind", "at", "block", "tx_hash", "gas_used", "price", "worker", "message",
)  # fmt: skip
SUMMARY_COLUMNS: tuple[str, ...] = (
    "runs", "completed", "failed", "not_processed", "cancelled", "disputed", "in_flight",
    "spent_hour", "spent_today", "spent_total", "mean_duration_s",
)  # fmt: skip

# Enough digits for any uint256 amount of wei, so the ether Decimals are exact
# whatever the default context says.
_EXACT = decimal.Context(prec=80)

# The history comes from two queries on one snapshot: the numbers, one row per
# run, and the text, one JSON array per column; see history_frame for why.
_HISTORY_NUMBERS = (
    "rowid", "submitted_at", "started_at", "completed_at", "gas_used", "price_wei", "gas_cost_wei",
)  # fmt: skip
_HISTORY_TEXT = (
    "run_id", "name", "network", "status", "worker", "input_cid", "result_cid", "error", "cell_hash",
)  # fmt: skip
_NEWEST_FIRST = "ORDER BY submitted_at DESC, rowid DESC"
_JSON_ARRAY = "json_group_array"

# Python-backed "str": pandas' default pyarrow storage costs several times more
# to build from Python strings, and these came from sqlite3 as Python strings.
_STR = pd.StringDtype(storage="python", na_value=np.nan)
_WEI_PER_ETHER = Decimal(10**18)
_ZERO = Decimal(0)

_RELATIVE = re.compile(
    r"^(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>s|sec|secs|m|min|mins|h|hr|hrs|d|day|days|w|wk|wks)$"
)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def history_frame(
    ledger: Ledger,
    network: str | None = None,
    status: Status | str | Iterable[Status | str] | None = None,
    since: datetime | timedelta | str | None = None,
    limit: int | None = None,
) -> pd.DataFrame:
    """One row per run, newest first, with the columns in ``HISTORY_COLUMNS``.

    ``duration_s`` is ``completed_at - submitted_at``: the wait the user
    lived through, queueing included. ``price``, ``gas_cost`` and
    ``total_cost`` are Decimal ether. ``since`` takes a datetime, a date text
    pandas understands, a relative age (``"30m"``, ``"1h"``, ``"2d"``) or
    ``"today"``; see :func:`parse_since`.

    Built from two queries on one snapshot of the ledger with column-wise
    conversions, because a history of 100,000 runs must still open in a
    blink.

    >>> ledger.history_frame(status="completed", since="1h", limit=5)  # doctest: +SKIP
    """
    where = "1 = 1"
    params: list[Any] = []
    if network is not None:
        where += " AND network = ?"
        params.append(network)
    if status is not None:
        wanted = _statuses(status)
        where += f" AND status IN ({', '.join('?' * len(wanted))})"
        params.extend(wanted)
    if since is not None:
        where += " AND submitted_at >= ?"
        params.append(parse_since(since).timestamp())
    numbers_sql = f"SELECT {', '.join(_HISTORY_NUMBERS)} FROM runs WHERE {where}"
    if limit is not None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise UsageError(f"limit must be a whole number of runs, zero or more, not {limit!r}.")
        # A few newest rows: let the submitted_at index find them.
        numbers_sql += f" {_NEWEST_FIRST} LIMIT ?"
        text_source = f"runs WHERE rowid IN (SELECT rowid FROM runs WHERE {where} {_NEWEST_FIRST} LIMIT ?)"
        params.append(limit)
    else:
        # The whole history: walking the index costs a b-tree lookup per row,
        # so read in storage order and sort the times in numpy instead.
        # rowid DESC makes the stable sort below break ties newest-first.
        numbers_sql += " ORDER BY rowid DESC"
        text_source = f"runs WHERE {where}"

    # sqlite3 hands over every cell on its own (a GIL release and a new object
    # each), which made the text columns the slowest part of a long history.
    # SQLite builds them into JSON arrays without holding the GIL, so that
    # query runs on a helper thread, on the second core, while this thread
    # converts the numbers.
    with ledger.snapshot() as conn, ThreadPoolExecutor(1, thread_name_prefix="decloud-history") as helper:
        numbers = _table(conn.execute(numbers_sql, params).fetchall(), len(_HISTORY_NUMBERS))
        text = helper.submit(_history_text, conn, text_source, params)
        rowid, submitted_s, started_s, completed_s, gas_used, price_wei, gas_cost_wei = numbers.T
        order: slice | np.ndarray = slice(None)
        submitted_s = submitted_s.astype("float64")
        if limit is None and len(submitted_s) > 1 and not (np.diff(submitted_s) <= 0).all():
            # Runs recorded out of order (imports, a second kernel): sort. The
            # usual history is already in order and skips this.
            order = np.argsort(-submitted_s, kind="stable")
            submitted_s = submitted_s[order]
        completed_s = completed_s[order].astype("float64")
        price, gas_cost = _ether(price_wei[order], repeats=True), _ether(gas_cost_wei[order])
        frame = {
            "submitted_at": _times(submitted_s),
            "started_at": _times(started_s[order].astype("float64")),
            "completed_at": _times(completed_s),
            "duration_s": completed_s - submitted_s,
            "price": _money(price, len(price)),
            "gas_used": _counts(gas_used[order]),
            "gas_cost": _money(gas_cost, len(price)),
            "total_cost": _money(map(_EXACT.add, price, gas_cost), len(price)),
        }
        ids, *arrays = text.result()
    at = _positions(json.loads(ids), rowid.tolist())
    if isinstance(order, np.ndarray):
        at = len(rowid) - 1 - order if at is None else at[order]
    for name, array in zip(_HISTORY_TEXT, arrays):
        frame[name] = _text(_ordered(json.loads(array), at), copy=False)
    return pd.DataFrame(
        frame,
        columns=list(HISTORY_COLUMNS),
        copy=False,  # every array above is new and ours; copying them again costs ~10 ms
    )


def _history_text(conn: sqlite3.Connection, source: str, params: list[Any]) -> tuple[str, ...]:
    """The rowids, then each of ``_HISTORY_TEXT``, as JSON arrays from ``SELECT ... FROM {source}``.

    The arrays share one order, whichever SQLite picks; history_frame
    matches them to its rows by rowid. They stay JSON text here because
    parsing them on this thread would only compete with the caller's for
    the GIL.
    """
    columns = ("rowid", *_HISTORY_TEXT)
    try:
        (arrays,) = conn.execute(
            f"SELECT {', '.join(f'{_JSON_ARRAY}({c})' for c in columns)} FROM {source}", params
        ).fetchall()
    except sqlite3.OperationalError as exc:
        if _JSON_ARRAY not in str(exc):
            raise
        # An SQLite built without its JSON functions (optional before 3.38):
        # the same arrays, made here from the rows.
        found = conn.execute(f"SELECT {', '.join(columns)} FROM {source}", params).fetchall()
        return tuple(json.dumps(list(values)) for values in zip(*found)) if found else ("[]",) * len(columns)
    return tuple(arrays)


def events_frame(ledger: Ledger, run_id: str) -> pd.DataFrame:
    """One row per event of ``run_id`` in the order they happened (``EVENT_COLUMNS``).

    ``gas_used`` is the gas paid for the run so far at that event; ``price``
    is Decimal ether.
    """
    rows = ledger.query(
        "SELECT run_id, kind, at, block, tx_hash, gas_used, price_wei, worker, message"
        " FROM events WHERE run_id = ? ORDER BY at, id",
        (run_id,),
    )
    rid, kind, at, block, tx_hash, gas_used, price_wei, worker, message = _table(rows, 9).T
    return pd.DataFrame(
        {
            "run_id": _text(rid),
            "kind": _text(kind),
            "at": _times(at.astype("float64")),
            "block": pd.array(block, dtype="Int64"),
            "tx_hash": _text(tx_hash),
            "gas_used": pd.array(gas_used, dtype="Int64"),
            "price": _money(_ether(price_wei, repeats=True), len(rid)),
            "worker": _text(worker),
            "message": _text(message),
        },
        columns=list(EVENT_COLUMNS),
        copy=False,
    )


def summary_frame(ledger: Ledger, now: datetime | None = None, network: str | None = None) -> pd.DataFrame:
    """One row of counts and spending (``SUMMARY_COLUMNS``), for the panel's header.

    ``spent_*`` are Decimal ether counted as the budget counts them (see
    :func:`decloud_magics.ledger.run_spent_wei`) over runs submitted in the
    last hour, since midnight UTC, and ever. ``mean_duration_s`` is over
    completed runs only, so failures that end early do not flatter it; NaN
    when there are none.
    """
    now = _aware(now) if now is not None else utcnow()
    where, params = ("WHERE network = ?", [network]) if network is not None else ("", [])
    counts = dict(ledger.query(f"SELECT status, COUNT(*) FROM runs {where} GROUP BY status", params))
    completed_where = f"{where} {'AND' if where else 'WHERE'} status = ? AND completed_at IS NOT NULL"
    (mean,) = ledger.query(
        f"SELECT AVG(completed_at - submitted_at) FROM runs {completed_where}",
        [*params, Status.COMPLETED.value],
    )[0]
    final = {s.value for s in FINAL_STATUSES}
    row: dict[str, Any] = {"runs": sum(counts.values())}
    for status in (Status.COMPLETED, Status.FAILED, Status.NOT_PROCESSED, Status.CANCELLED, Status.DISPUTED):
        row[status.value] = counts.get(status.value, 0)
    row["in_flight"] = sum(n for s, n in counts.items() if s not in final)
    with decimal.localcontext(_EXACT):
        row["spent_hour"] = wei_to_decimal(ledger.spent_wei(since=now - timedelta(hours=1), network=network))
        row["spent_today"] = wei_to_decimal(ledger.spent_wei(since=_midnight(now), network=network))
        row["spent_total"] = wei_to_decimal(ledger.spent_wei(network=network))
    row["mean_duration_s"] = float("nan") if mean is None else float(mean)
    frame = pd.DataFrame({k: [v] for k, v in row.items()}, columns=list(SUMMARY_COLUMNS))
    return frame.astype(
        {c: "int64" for c in SUMMARY_COLUMNS[:7]} | {c: object for c in SUMMARY_COLUMNS[7:10]}
    )


def parse_since(value: datetime | timedelta | str, now: datetime | None = None) -> datetime:
    """The aware UTC instant a ``since=`` filter means.

    Accepts a datetime, a timedelta (that long before now), a relative age
    such as ``"90s"``, ``"30m"``, ``"1h"``, ``"2d"``, ``"1w"``, the words
    ``"today"`` and ``"yesterday"`` (midnight UTC, like every time in the
    ledger), or any date text pandas parses. Naive datetimes and texts are
    read as UTC, for the same reason.

    >>> parse_since("2h", now=datetime(2024, 5, 1, 12, tzinfo=timezone.utc))
    datetime.datetime(2024, 5, 1, 10, 0, tzinfo=datetime.timezone.utc)
    """
    now = _aware(now) if now is not None else utcnow()
    if isinstance(value, datetime):
        return _aware(value)
    if isinstance(value, timedelta):
        return now - value
    if not isinstance(value, str):
        raise UsageError(f"since must be a datetime or a text such as '1h' or '2024-05-01', not {value!r}.")
    text = value.strip().lower()
    if text == "today":
        return _midnight(now)
    if text == "yesterday":
        return _midnight(now) - timedelta(days=1)
    match = _RELATIVE.match(text)
    if match:
        return now - timedelta(seconds=float(match["n"]) * _UNIT_SECONDS[match["unit"][0]])
    try:
        stamp = pd.Timestamp(value.strip())
    except (ValueError, TypeError, OverflowError):
        stamp = pd.NaT
    if pd.isna(stamp):
        raise UsageError(
            f"'{value}' is not a time: write a date such as '2024-05-01 09:00', an age such as '30m', '1h' "
            "or '2d', or 'today'."
        )
    return _aware(stamp.to_pydatetime())


# -- column conversions ----------------------------------------------------


def _table(rows: list[tuple[Any, ...]], width: int) -> np.ndarray:
    # One 2-D object array built by a C loop over the flattened rows; its
    # columns are then cheap views. About twice as fast as filling an array
    # from the tuples, and far faster than zip(*rows).
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=object, count=len(rows) * width)
    return flat.reshape(len(rows), width)


def _text(column: np.ndarray, copy: bool = True) -> pd.api.extensions.ExtensionArray:
    # copy=False only for arrays made for the frame: it keeps them as they are.
    return pd.array(column, dtype=_STR, copy=copy)


def _times(seconds: np.ndarray) -> pd.DatetimeIndex:
    # Whole microseconds, rounded from the fraction alone: scaling the whole
    # float by 1e6 would round away the last microsecond of late dates, and
    # not rounding would show float noise as stray nanoseconds. This matches
    # datetime.fromtimestamp, which get_run() uses. NaN stays NaN, then NaT.
    whole = np.floor(seconds)
    micros = whole * 1e6 + np.round((seconds - whole) * 1e6)
    return pd.to_datetime(micros, unit="us", utc=True)


def _ether(column: Iterable[Any], repeats: bool = False) -> list[Decimal]:
    """Wei texts as exact Decimal ether, equal to what units.wei_to_decimal gives.

    Written out here rather than calling wei_to_decimal per row because this
    runs over every row of the history. With ``repeats`` (prices, which users
    pick from a few values) each distinct amount is divided once; gas costs
    are nearly all distinct, and memoizing them would only add dict work.
    None (unknown) is 0, as in wei_to_decimal.
    """
    with decimal.localcontext(_EXACT):
        if repeats:
            seen: dict[Any, Decimal] = {None: _ZERO}
            return [seen[w] if w in seen else seen.setdefault(w, Decimal(w) / _WEI_PER_ETHER) for w in column]
        return [_ZERO if w is None else Decimal(w) / _WEI_PER_ETHER for w in column]


def _money(values: Iterable[Decimal], count: int) -> np.ndarray:
    # An object array, never float: the Decimals stay exact. fromiter, as
    # np.array() would spend longer looking for nested sequences.
    return np.fromiter(values, dtype=object, count=count)


def _counts(column: np.ndarray) -> pd.arrays.IntegerArray:
    # Nullable Int64 from ints and Nones, built from its mask directly: a
    # few times quicker than pd.array(column, dtype="Int64").
    missing = pd.isna(column)
    return pd.arrays.IntegerArray(np.where(missing, 0, column).astype(np.int64), missing)


def _positions(ids: list[int], wanted: list[int]) -> np.ndarray | None:
    """Where each rowid of ``wanted`` sits in ``ids``, the same rowids in another order.

    None when ``ids`` is ``wanted`` reversed: the usual case, a scan in
    storage order against rowid DESC.
    """
    if ids == wanted[::-1]:
        return None
    have, want = np.array(ids, dtype=np.int64), np.array(wanted, dtype=np.int64)
    if len(have) == len(want):
        sorter = np.argsort(have)
        found = sorter[np.searchsorted(have, want, sorter=sorter).clip(max=len(have) - 1)]
        if np.array_equal(have[found], want):
            return found
    raise RuntimeError("The two queries of one history snapshot returned different runs.")


def _ordered(values: list[Any], at: np.ndarray | None) -> np.ndarray:
    """``values[at]`` as an object array; reversed when ``at`` is None (see _positions)."""
    if at is None:
        values.reverse()
    column = np.fromiter(values, dtype=object, count=len(values))
    return column if at is None else column[at]


def _statuses(status: Status | str | Iterable[Status | str]) -> list[str]:
    items = [status] if isinstance(status, str) else list(status)
    try:
        return [Status(item).value for item in items]
    except ValueError:
        known = ", ".join(s.value for s in Status)
        raise UsageError(f"status must be one of {known}; got {status!r}.") from None


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _midnight(now: datetime) -> datetime:
    return now.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
