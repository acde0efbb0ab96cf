"""The live panel: widget state after each event, the text fallback, and --async runs."""

from __future__ import annotations

import time

from decloud_magics.models import EventKind, RunEvent
from decloud_magics.panel import PanelState
from decloud_magics.widgets import WIDGET_VIEW, RunPanel, frontend_mode


def test_panel_state_folds_events_into_stages_and_a_summary():
    state = PanelState(run_id="abc123", name="demo")
    state.apply(RunEvent(EventKind.CREATED, "abc123", message="task 7 created", price_wei=10**15,
                         gas_used=90_000, data={"task_id": 7, "input_cid": "bafk1", "elapsed_s": 0.1}))  # fmt: skip
    assert state.stage == 0 and state.figures()["task"] == "7"
    state.apply(RunEvent(EventKind.ORDER_PLACED, "abc123", worker="0x" + "ab" * 20, price_wei=10**15,
                         data={"elapsed_s": 0.2}))  # fmt: skip
    assert state.apply(RunEvent(EventKind.STDOUT, "abc123", message="line 1", data={"elapsed_s": 0.3})) is False
    state.apply(RunEvent(EventKind.FAILED, "abc123", message="the cell raised ValueError: bad",
                         price_wei=10**15, data={"elapsed_s": 1.5, "refund": 10**15}))  # fmt: skip
    assert state.done and state.ending == "failed"
    assert state.stage_labels()[-1] == "failed"
    assert state.stdout_tail == ["line 1"]
    assert state.total_cost_wei == 0  # refunded, and no gas cost was given
    text = state.text()
    assert "created" in text and "order placed" in text and "failed" in text
    assert state.summary().startswith("decloud run demo abc123: failed in 1.50 s")


def test_widget_state_after_each_event(client):
    states = []

    class RecordingPanel(RunPanel):
        def _on_event(self, event):  # type: ignore[no-untyped-def]
            super()._on_event(event)
            states.append((event.kind, self.stepper.get_state()["value"], self.figures.get_state()["value"]))

    run = client.submit("import time\nfor i in range(3):\n    print('tick', i)\nanswer = 42", timeout=30)
    panel = RecordingPanel(run, mode="widget")  # events so far are replayed in order, the rest arrive live
    run.wait(60)
    panel.finish(["answer"])
    kinds = [k for k, _, _ in states]
    assert kinds[0] == EventKind.CREATED and kinds[-1] == EventKind.COMPLETED
    created_stepper = states[0][1]
    assert "● created" in created_stepper and "○ order placed" in created_stepper
    placed = next(s for k, s, _ in states if k == EventKind.ORDER_PLACED)
    assert "● order placed" in placed and "○ running" in placed
    final_stepper, final_figures = states[-1][1], states[-1][2]
    assert "● completed" in final_stepper
    assert run.result_cid in final_figures and "ETH" in final_figures
    summary = panel.message.get_state()["value"]
    assert "completed" in summary and "set answer" in summary
    assert panel.cancel_button.get_state()["disabled"] is True
    bundle = panel.mimebundle()
    assert WIDGET_VIEW in bundle and "completed" in bundle["text/plain"]


def test_cancel_button_cancels_an_open_task(client):
    from decloud_magics.connection import local_network

    workers = local_network().pool.workers
    for w in workers:
        w.policy.max_timeout = 100
    try:
        run = client.submit("never = 1", timeout=300)
        panel = RunPanel(run, mode="widget")
        assert panel.cancel_button.disabled is False
        panel.cancel_button.click()
        run.wait(30)
    finally:
        for w in workers:
            w.policy.max_timeout = 3600
    assert run.status.value == "cancelled"
    deadline = time.monotonic() + 5
    while "cancelled" not in panel.message.value and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "refunded" in panel.message.value


def test_text_fallback_prints_stages_not_a_widget_repr(shell, run_cell):
    assert frontend_mode(shell) == "text"  # a bare shell has no kernel to render widgets
    result, out = run_cell("%%decloud run --name text-mode\nq = 7\nprint('q is', q)")
    result.raise_error()
    assert out.stdout == "q is 7\n"
    for stage in ("created", "order placed", "completed"):
        assert stage in out.stderr
    assert "VBox(" not in out.stderr + out.stdout and "IntProgress" not in out.stderr + out.stdout
    assert "set q" in out.stderr


def test_ten_async_runs_all_land_once(shell, run_cell):
    magics = next(m for m in shell.configurables if type(m).__name__ == "DecloudMagics")
    landed_with_values = []
    original = magics._land

    def counting_land(run, **kw):  # type: ignore[no-untyped-def]
        result = original(run, **kw)
        if result is not None:
            landed_with_values.append(run.id)
        return result

    magics._land = counting_land
    try:
        for i in range(10):
            result, _ = run_cell(f"%%decloud run --async --name async-{i}\nasync_value_{i} = {i} * 3")
            result.raise_error()
        runs = [r for r in magics._runs.values() if (r.name or "").startswith("async-")]
        assert len(runs) == 10
        for run in runs:
            run.wait(120)
        run_cell("pass")  # the next cell lands whatever finished meanwhile
        run_cell("pass")  # and nothing lands twice
    finally:
        del magics._land
    for i in range(10):
        assert shell.user_ns[f"async_value_{i}"] == i * 3
    assert sorted(landed_with_values) == sorted(r.id for r in runs)
