"""What the TaskMarket contract stores and says, as typed values.

A task and its status as ``getTask`` returns them, a decoded log, and what a
mined transaction cost and emitted.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from ..errors import ChainError


class ChainStatus(enum.IntEnum):
    """``TaskMarket.Status`` as stored on chain."""

    NONE = 0
    OPEN = 1
    CLAIMED = 2
    COMPLETED = 3
    NOT_PROCESSED = 4
    CANCELLED = 5
    DISPUTED = 6
    FAILED = 7


@dataclass(frozen=True)
class MarketEvent:
    """A decoded contract log, with where it happened."""

    name: str
    args: dict[str, Any]
    block: int
    tx_hash: str
    log_index: int

    @property
    def task_id(self) -> int | None:
        value = self.args.get("taskId")
        return int(value) if value is not None else None


@dataclass(frozen=True)
class TxOutcome:
    """What one mined transaction cost and said."""

    tx_hash: str
    block: int
    gas_used: int
    gas_cost_wei: int
    events: tuple[MarketEvent, ...] = field(default_factory=tuple)

    def first(self, name: str) -> MarketEvent:
        for event in self.events:
            if event.name == name:
                return event
        raise ChainError(f"The transaction {self.tx_hash} emitted no {name} event.")


@dataclass(frozen=True)
class OnchainTask:
    task_id: int
    requester: str
    price_wei: int
    deadline: int
    timeout: int
    lease: int
    status: ChainStatus
    validators: int
    seats_taken: int
    submitted: int
