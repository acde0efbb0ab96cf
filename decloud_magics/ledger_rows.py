"""The run record and how ledger rows store it.

Storage shapes: money is the decimal text of integer wei, because wei
outgrows SQLite's 64-bit integers; time is float unix seconds in UTC, which
keeps microseconds and sorts and compares cheaply in SQL. The encoders here
refuse what would store wrongly (floats for wei, naive times) rather than
round or shift it.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

from .models import Status, utcnow

__all__ = ["RUN_COLUMNS", "RunRecord", "decode_run", "encode_column", "run_spent_wei", "to_unix", "wei_text"]


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
_TIME_COLUMNS = frozenset({"submitted_at", "started_at", "completed_at", "deadline"})
_WEI_COLUMNS = frozenset({"price_wei", "gas_cost_wei", "refunded_wei"})
_INT_COLUMNS = frozenset({"task_id", "gas_used", "validators"})
_JSON_COLUMNS = frozenset({"outputs", "options"})
_NOT_NULL = frozenset({"status", "submitted_at", "price_wei", "outputs", "options"})


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


def encode_column(column: str, value: Any) -> Any:
    """A RunRecord value in its storage shape, refusing what would store wrongly."""
    if value is None:
        if column in _NOT_NULL:
            raise ValueError(f"{column} cannot be None.")
        return None
    if column in _TIME_COLUMNS:
        return to_unix(value, column)
    if column in _WEI_COLUMNS:
        return wei_text(value, column)
    if column in _INT_COLUMNS:
        return operator.index(value)
    if column in _JSON_COLUMNS:
        return json.dumps(value)
    if column == "status":
        return Status(value).value
    if not isinstance(value, str):
        raise TypeError(f"{column} takes text, not {type(value).__name__}.")
    return value


def decode_run(row: Sequence[Any]) -> RunRecord:
    """The RunRecord of one ``runs`` row, selected in ``RUN_COLUMNS`` order."""
    values = dict(zip(RUN_COLUMNS, row))
    for column in _TIME_COLUMNS:
        values[column] = _from_unix(values[column])
    for column in _WEI_COLUMNS:
        values[column] = None if values[column] is None else int(values[column])
    for column in _JSON_COLUMNS:
        values[column] = json.loads(values[column])
    values["status"] = Status(values["status"])
    return RunRecord(**values)


def to_unix(value: datetime, what: str) -> float:
    """A timezone-aware datetime as unix seconds; ``what`` names it in the error."""
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime, not {type(value).__name__}.")
    if value.tzinfo is None or value.utcoffset() is None:
        # A naive time would be read as the machine's local time: refuse it
        # rather than store an hour-shifted run.
        raise ValueError(f"{what} must be timezone-aware (e.g. models.utcnow()), not a naive datetime.")
    return value.timestamp()


def _from_unix(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, timezone.utc)


def wei_text(value: Any, what: str) -> str:
    """Integer wei as decimal text; ``what`` names the value in the error."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be integer wei, not a bool.")
    wei = operator.index(value)  # refuses floats and Decimals: money is never rounded here
    if wei < 0:
        raise ValueError(f"{what} must be zero or more wei, not {wei}.")
    return str(wei)
