"""The live panel under a ``%%decloud run`` cell: an ipywidgets view of ``PanelState``.

Where no widget can render (terminal IPython, nbconvert, nbval) the same stages
reach the user as text: the panel's display carries a ``text/plain`` form that
is updated at each stage, and a terminal gets one line per stage on stderr.
"""

from __future__ import annotations

import html
import sys
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .models import RunEvent
from .panel import STAGES, PanelState

if TYPE_CHECKING:
    import ipywidgets

    from .run import Run

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

_ENDING_COLOUR = {
    "completed": "#2e7d32",
    "failed": "#c62828",
    "not processed": "#ef6c00",
    "cancelled": "#6d6d6d",
    "disputed": "#ef6c00",
}


def frontend_mode(shell: Any) -> str:
    """"widget" in a kernel (a frontend may render widgets), "text" in a terminal or bare shell."""
    if shell is None or getattr(shell, "kernel", None) is None:
        return "text"
    try:
        import ipywidgets  # noqa: F401
    except ImportError:  # pragma: no cover - ipywidgets is a dependency
        return "text"
    return "widget"


class RunPanel:
    """Follows one run and renders it as a widget or as text lines."""

    def __init__(self, run: Run, *, symbol: str = "ETH", mode: str = "widget", stream: Any = None,
                 cancel: Callable[[], int] | None = None) -> None:  # fmt: skip
        self.run = run
        self.mode = mode
        self.stream = stream or sys.stderr
        self.state = PanelState(run_id=run.id, name=run.name, network=run.network, symbol=symbol)
        self._cancel = cancel or run.cancel
        self._lock = threading.RLock()
        self._display_id = uuid.uuid4().hex
        self._shown = False
        self.output: ipywidgets.Output | None = None
        if mode == "widget":
            self._build()
        self._unsubscribe = run.on("*", self._on_event)
        if mode == "widget":
            threading.Thread(target=self._tick, name=f"decloud-panel-{run.id}", daemon=True).start()

    # -- widget ---------------------------------------------------------------

    def _build(self) -> None:
        import ipywidgets as w

        self.title = w.HTML()
        self.stepper = w.HTML()
        self.figures = w.HTML()
        self.message = w.HTML()
        self.stdout = w.HTML(layout=w.Layout(display="none"))
        self.cancel_button = w.Button(description="Cancel", icon="times", button_style="warning",
                                      tooltip="Cancel the task while no worker holds it; the escrow comes back")  # fmt: skip
        self.cancel_button.on_click(self._on_cancel)
        self.output = w.Output()
        self.details = w.VBox([self.title, self.stepper, self.figures, self.message, self.stdout,
                               w.HBox([self.cancel_button])])  # fmt: skip
        self.widget = w.VBox([self.details, self.output], layout=w.Layout(border="1px solid #ddd", padding="4px"))
        self._render()

    def _render(self) -> None:
        s = self.state
        label = f" <i>{html.escape(s.name)}</i>" if s.name else ""
        self.title.value = f"<b>decloud</b> run <code>{s.run_id}</code>{label} on <b>{html.escape(s.network)}</b>"
        steps = []
        for index, name in enumerate(s.stage_labels()):
            if index < s.stage or (s.done and index == s.stage):
                colour = _ENDING_COLOUR.get(name, "#2e7d32") if index == len(STAGES) - 1 else "#2e7d32"
                style = f"color:{colour};font-weight:{'bold' if index == s.stage else 'normal'}"
            elif index == s.stage:
                style = "color:#1565c0;font-weight:bold"
            else:
                style = "color:#9e9e9e"
            marker = "●" if index <= s.stage else "○"
            steps.append(f'<span style="{style}">{marker} {html.escape(name)}</span>')
        self.stepper.value = " → ".join(steps)
        self.figures.value = self._figures_html()
        self.message.value = html.escape(s.message)
        if s.stdout_tail:
            self.stdout.layout.display = None
            self.stdout.value = "<pre style='margin:0;max-height:10em;overflow:auto'>" + html.escape(
                "\n".join(s.stdout_tail)
            ) + "</pre>"
        self.cancel_button.disabled = s.stage >= 1 or s.done
        if s.done:
            colour = _ENDING_COLOUR.get(s.ending or "", "#333")
            self.details.children = (self.message,)
            self.message.value = f"<span style='color:{colour}'>{html.escape(s.summary())}</span>"

    def _tick(self) -> None:
        """Keep the elapsed time moving between events (widget only: text lines stay few)."""
        while not self.run.done():
            self.run._done.wait(0.5)
            with self._lock:
                if self.state.done:
                    return
                self.state.elapsed_s = self.run.elapsed_s
                self.figures.value = self._figures_html()

    def _figures_html(self) -> str:
        cells = "".join(
            f"<td style='padding:0 12px 0 0'><small>{html.escape(k)}</small><br><code>{html.escape(v)}</code></td>"
            for k, v in self.state.figures().items()
        )
        return f"<table><tr>{cells}</tr></table>"

    def _on_cancel(self, _button: Any) -> None:
        self.cancel_button.disabled = True
        self.cancel_button.description = "Cancelling…"

        def cancel() -> None:
            try:
                self._cancel()
            except Exception as exc:  # noqa: BLE001 (any failure to cancel is shown in the panel)
                with self._lock:
                    self.state.message = f"could not cancel: {exc}"
                    self._render()

        threading.Thread(target=cancel, daemon=True).start()

    # -- events ------------------------------------------------------------------

    def _on_event(self, event: RunEvent) -> None:
        with self._lock:
            new_stage = self.state.apply(event, gas_cost_wei=self.run.gas_cost_wei)
            if self.mode == "widget":
                self._render()
                if new_stage and self._shown:
                    self._publish(update=True)
            elif new_stage and self._shown:
                print(self.state.lines[-1], file=self.stream, flush=True)

    def mimebundle(self) -> dict[str, Any]:
        """The widget view plus its text form: frontends pick what they can show."""
        bundle: dict[str, Any] = {"text/plain": self.state.text() or f"[decloud {self.run.id}] submitted"}
        if self.mode == "widget":
            bundle[WIDGET_VIEW] = {"version_major": 2, "version_minor": 0, "model_id": self.widget.model_id}
        return bundle

    def show(self) -> RunPanel:
        """Put the panel under the cell (widget mode) or start printing stage lines (text mode)."""
        with self._lock:
            self._shown = True
            if self.mode == "widget":
                self._publish(update=False)
            else:
                for line in self.state.lines:
                    print(line, file=self.stream, flush=True)
        return self

    def _publish(self, update: bool) -> None:
        from IPython.display import display, update_display

        if update:
            update_display(self.mimebundle(), raw=True, display_id=self._display_id)
        else:
            display(self.mimebundle(), raw=True, display_id=self._display_id)

    def finish(self, changed: list[str]) -> None:
        """Collapse to the summary; name the variables the run set."""
        with self._lock:
            self.state.changed = list(changed)
            if self.mode == "widget":
                self._render()
                if self._shown:
                    self._publish(update=True)
            elif self._shown:
                print(self.state.summary(), file=self.stream, flush=True)
        self._unsubscribe()

    def close(self) -> None:
        self._unsubscribe()

