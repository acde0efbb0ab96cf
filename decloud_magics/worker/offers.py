"""What a worker is offered and what it is willing to take.

A ``TaskOffer`` is a task as the worker learns of it from ``TaskCreated``; a
``WorkerPolicy`` holds the bounds of price, time and memory the worker accepts
(``Worker.accepts`` compares the two).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..chain.records import MarketEvent


@dataclass(frozen=True)
class TaskOffer:
    """A task as announced by ``TaskCreated``."""

    task_id: int
    requester: str
    price_wei: int
    input_cid: str
    deadline: int
    timeout: int
    lease: int
    validators: int
    cpus: int
    memory_mb: int

    @classmethod
    def from_event(cls, event: MarketEvent) -> TaskOffer:
        a = event.args
        return cls(
            task_id=int(a["taskId"]),
            requester=str(a["requester"]),
            price_wei=int(a["price"]),
            input_cid=bytes(a["inputCid"]).decode(),
            deadline=int(a["deadline"]),
            timeout=int(a["timeout"]),
            lease=int(a["lease"]),
            validators=int(a["validators"]),
            cpus=int(a["cpus"]),
            memory_mb=int(a["memoryMb"]),
        )

    @property
    def price_per_seat(self) -> int:
        return self.price_wei // max(self.validators, 1)


@dataclass
class WorkerPolicy:
    """What a worker is willing to do."""

    min_price_wei: int = 0
    max_timeout: int = 3600
    max_memory_mb: int = 4096
    slots: int = 1
