"""The JSON shapes the REST API answers with, and the query it accepts.

``labextension/src/models.ts`` mirrors these TypedDicts in one namespace;
change both together. Money is a decimal string in the network's coin (exact,
never a float: JSON numbers are doubles in the browser); times are ISO-8601
UTC strings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TypedDict

from ..errors import UsageError
from ..models import Status
from ..units import WEI_PER_UNIT

__all__ = [
    "MAX_LIMIT",
    "EventModel",
    "RunDetailModel",
    "RunListModel",
    "RunModel",
    "RunsQuery",
    "SpendingModel",
    "SummaryModel",
    "coin_text",
    "iso_time",
]

#: Default and largest page of runs: the panel shows the newest ones, and a
#: bounded answer keeps every request cheap however long the history is.
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

_WEI_PER_COIN = WEI_PER_UNIT["ether"]
_COIN_DECIMALS = len(str(_WEI_PER_COIN)) - 1
_RUNS_PARAMETERS = ("network", "status", "limit")


class RunModel(TypedDict):
    id: str
    name: str | None
    network: str | None
    unit: str
    status: str
    final: bool
    task_id: int | None
    submitted_at: str
    started_at: str | None
    completed_at: str | None
    duration_s: float | None
    price: str
    gas_used: int | None
    gas_cost: str
    total_cost: str
    refunded: str | None
    worker: str | None
    input_cid: str | None
    result_cid: str | None
    error: str | None


class EventModel(TypedDict):
    kind: str
    at: str
    block: int | None
    tx_hash: str | None
    gas_used: int | None
    price: str
    worker: str | None
    message: str


class RunListModel(TypedDict):
    runs: list[RunModel]
    total: int


class RunDetailModel(TypedDict):
    run: RunModel
    events: list[EventModel]


class SpendingModel(TypedDict):
    network: str | None
    unit: str
    hour: str
    today: str
    total: str


class SummaryModel(TypedDict):
    runs: int
    in_flight: int
    statuses: dict[str, int]
    mean_duration_s: float | None
    spending: list[SpendingModel]
    as_of: str


@dataclass(frozen=True)
class RunsQuery:
    """The filters of ``GET /decloud/runs``, checked before any SQL runs."""

    network: str | None = None
    statuses: tuple[Status, ...] = ()
    limit: int = DEFAULT_LIMIT

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Sequence[str]]) -> RunsQuery:
        """Parse query-string values; a bad one is a UsageError with one sentence.

        Empty values count as not given, as HTML forms send them.
        """
        # JupyterLab's ServerConnection appends a bare timestamp (``?1716…``)
        # to GETs to defeat caches: a digits-only name is that, not a typo.
        unknown = sorted(name for name in set(arguments) - set(_RUNS_PARAMETERS) if not name.isdigit())
        if unknown:
            raise UsageError(f"Unknown query parameter '{unknown[0]}': use {', '.join(_RUNS_PARAMETERS)}.")
        network = _last(arguments.get("network"))
        statuses: list[Status] = []
        for value in arguments.get("status", ()):
            for item in value.split(","):
                if item.strip():
                    statuses.append(_status(item.strip()))
        limit_text = _last(arguments.get("limit"))
        limit = DEFAULT_LIMIT if limit_text is None else _limit(limit_text)
        return cls(network=network, statuses=tuple(dict.fromkeys(statuses)), limit=limit)


def coin_text(wei: int) -> str:
    """Integer wei as exact decimal text in the coin: ``10**15`` -> ``"0.001"``.

    Integer arithmetic, so no context precision or exponent form (``0E-18``)
    can creep in.
    """
    whole, fraction = divmod(wei, _WEI_PER_COIN)
    if not fraction:
        return str(whole)
    return f"{whole}.{fraction:0{_COIN_DECIMALS}d}".rstrip("0")


def iso_time(seconds: float | None) -> str | None:
    """Ledger time (unix seconds) as ISO-8601 UTC, the form browsers' ``Date`` parses."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="microseconds")


def _last(values: Sequence[str] | None) -> str | None:
    if not values:
        return None
    value = values[-1].strip()
    return value or None


def _status(text: str) -> Status:
    try:
        return Status(text.lower())
    except ValueError:
        known = ", ".join(s.value for s in Status)
        raise UsageError(f"status '{text}' is not a run status: use one of {known}.") from None


def _limit(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIMIT:
        raise UsageError(f"limit must be a whole number from 1 to {MAX_LIMIT}, not '{text}'.")
    return int(text)
