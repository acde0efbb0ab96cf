"""Plain data shared by every layer: run statuses, event kinds, run events.

Kept free of web3, IPython and pandas so any layer may import it cheaply.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any


class Status(str, enum.Enum):
    """Where a run is in its life, as the notebook sees it."""

    CREATED = "created"  # local record exists; nothing on chain yet
    OPEN = "open"  # task on chain, escrow paid, waiting for a worker
    CLAIMED = "claimed"  # a worker holds a lease on it
    RUNNING = "running"  # the worker reported progress
    COMPLETED = "completed"
    NOT_PROCESSED = "not_processed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DISPUTED = "disputed"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset(
    {Status.COMPLETED, Status.NOT_PROCESSED, Status.FAILED, Status.CANCELLED, Status.DISPUTED}
)


class EventKind(str, enum.Enum):
    """The stages a run reports, in the order they normally happen."""

    CREATED = "created"
    ORDER_PLACED = "order_placed"
    RUNNING = "running"
    STDOUT = "stdout"
    COMPLETED = "completed"
    NOT_PROCESSED = "not_processed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DISPUTED = "disputed"

    @property
    def is_final(self) -> bool:
        return self in FINAL_EVENT_KINDS


FINAL_EVENT_KINDS = frozenset(
    {
        EventKind.COMPLETED,
        EventKind.NOT_PROCESSED,
        EventKind.FAILED,
        EventKind.CANCELLED,
        EventKind.DISPUTED,
    }
)

#: The status a run has once it has seen an event of this kind.
STATUS_AFTER: dict[EventKind, Status] = {
    EventKind.CREATED: Status.OPEN,
    EventKind.ORDER_PLACED: Status.CLAIMED,
    EventKind.RUNNING: Status.RUNNING,
    EventKind.COMPLETED: Status.COMPLETED,
    EventKind.NOT_PROCESSED: Status.NOT_PROCESSED,
    EventKind.FAILED: Status.FAILED,
    EventKind.CANCELLED: Status.CANCELLED,
    EventKind.DISPUTED: Status.DISPUTED,
}


def utcnow() -> datetime:
    """Timezone-aware now; the ledger and events never hold naive times."""
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class Resources:
    """What a task asks of a worker. Memory in MiB keeps it an integer on chain."""

    cpus: int = 1
    memory_mb: int = 1024


#: What a task asks when its caller names nothing (frozen, so one instance serves every default).
DEFAULT_RESOURCES = Resources()


@dataclass
class RunEvent:
    """One stage of one run. Money is integer wei; views turn it into Decimal."""

    kind: EventKind
    run_id: str
    at: datetime = field(default_factory=utcnow)
    message: str = ""
    block: int | None = None
    tx_hash: str | None = None
    gas_used: int = 0  # cumulative gas the requester paid for this run so far
    price_wei: int = 0
    worker: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def is_final(self) -> bool:
        return self.kind.is_final
