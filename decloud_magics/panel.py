"""What a run's panel says, as plain data: stages, figures, the one-line summary.

Pure logic, no widgets: the widget (``widgets.py``), the plain-text fallback and
the CLI all render the same ``PanelState``, so they can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .models import EventKind, RunEvent
from .units import format_amount

#: The stepper's stages; the last one is named after how the run ended.
STAGES = ("created", "order placed", "running", "done")

_STAGE_OF = {
    EventKind.CREATED: 0,
    EventKind.ORDER_PLACED: 1,
    EventKind.RUNNING: 2,
    EventKind.STDOUT: 2,
}

ENDING_LABEL = {
    EventKind.COMPLETED: "completed",
    EventKind.FAILED: "failed",
    EventKind.NOT_PROCESSED: "not processed",
    EventKind.CANCELLED: "cancelled",
    EventKind.DISPUTED: "disputed",
}

STDOUT_TAIL = 8


@dataclass
class PanelState:
    """Everything a panel shows about one run, updated event by event."""

    run_id: str
    name: str | None = None
    network: str = "local"
    symbol: str = "ETH"
    stage: int = -1
    ending: str | None = None
    message: str = ""
    elapsed_s: float = 0.0
    price_wei: int = 0
    gas_used: int = 0
    gas_cost_wei: int = 0
    refund_wei: int = 0
    worker: str | None = None
    task_id: int | None = None
    input_cid: str | None = None
    result_cid: str | None = None
    stdout_tail: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # one per stage, the text form of the panel
    changed: list[str] = field(default_factory=list)  # names bound into the namespace at the end

    @property
    def done(self) -> bool:
        return self.ending is not None

    @property
    def total_cost_wei(self) -> int:
        return self.price_wei - self.refund_wei + self.gas_cost_wei

    def stage_labels(self) -> list[str]:
        labels = list(STAGES)
        if self.ending:
            labels[-1] = self.ending
        return labels

    def apply(self, event: RunEvent, gas_cost_wei: int | None = None) -> bool:
        """Fold one event in; True when it is a new stage (worth a text line)."""
        self.elapsed_s = float(event.data.get("elapsed_s", self.elapsed_s))
        self.price_wei = event.price_wei
        self.gas_used = event.gas_used
        if gas_cost_wei is not None:
            self.gas_cost_wei = gas_cost_wei
        if event.worker:
            self.worker = event.worker
        data = event.data
        self.task_id = data.get("task_id", self.task_id)
        self.input_cid = data.get("input_cid", self.input_cid)
        self.result_cid = data.get("result_cid", self.result_cid)
        if "refund" in data:
            self.refund_wei = int(data["refund"] or 0)
        if event.kind == EventKind.STDOUT:
            self.stdout_tail = (self.stdout_tail + [event.message])[-STDOUT_TAIL:]
            return False
        self.message = event.message
        if event.kind in ENDING_LABEL:
            self.stage = len(STAGES) - 1
            self.ending = ENDING_LABEL[event.kind]
        else:
            self.stage = max(self.stage, _STAGE_OF.get(event.kind, self.stage))
        self.lines.append(self.stage_line(event))
        return True

    def stage_line(self, event: RunEvent) -> str:
        label = ENDING_LABEL.get(event.kind, event.kind.value.replace("_", " "))
        return f"[decloud {self.run_id}] {self.elapsed_s:6.2f}s  {label:<13} {event.message}"

    def figures(self) -> dict[str, str]:
        """The panel's numbers, formatted for people."""
        return {
            "elapsed": f"{self.elapsed_s:.2f} s",
            "price": format_amount(self.price_wei, self.symbol),
            "gas": f"{self.gas_used:,} ({format_amount(self.gas_cost_wei, self.symbol)})",
            "total cost": format_amount(self.total_cost_wei, self.symbol),
            "worker": short_address(self.worker),
            "task": str(self.task_id) if self.task_id is not None else "—",
            "input": self.input_cid or "—",
            "result": self.result_cid or "—",
        }

    def summary(self) -> str:
        """The one line a finished panel collapses to."""
        what = self.ending or STAGES[max(self.stage, 0)]
        label = f"{self.name} " if self.name else ""
        parts = [
            f"decloud run {label}{self.run_id}: {what} in {self.elapsed_s:.2f} s",
            f"cost {format_amount(self.total_cost_wei, self.symbol)}",
        ]
        if self.refund_wei:
            parts.append(f"refunded {format_amount(self.refund_wei, self.symbol)}")
        if self.worker:
            parts.append(f"worker {short_address(self.worker)}")
        if self.changed:
            parts.append("set " + ", ".join(self.changed))
        return " · ".join(parts)

    def text(self) -> str:
        """The panel as plain text, for frontends that cannot show widgets."""
        lines = list(self.lines)
        if self.done:
            lines.append(self.summary())
        return "\n".join(lines)


def short_address(address: str | None) -> str:
    return f"{address[:6]}…{address[-4:]}" if address else "—"
