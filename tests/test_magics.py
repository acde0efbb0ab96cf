"""``%%decloud run`` driven through a real InteractiveShell, the way a notebook user runs it."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError as IPythonUsageError

from decloud_magics.errors import RemoteError, SerializationError


def test_namespace_in_and_out_with_stdout_replayed(shell, run_cell):
    shell.run_cell("import pandas as pd\ndf = pd.DataFrame({'x': range(10)})")
    result, out = run_cell('%%decloud run\ntotal = int(df["x"].sum())\nprint("sum is", total)')
    result.raise_error()
    assert out.stdout == "sum is 45\n"
    assert shell.user_ns["total"] == 45


def test_a_dataframe_round_trips(shell, run_cell):
    shell.run_cell("import pandas as pd\nframe = pd.DataFrame({'a': [1.5, 2.5], 'b': ['x', 'y']}, index=[3, 4])")
    result, _ = run_cell("%%decloud run\ndoubled = frame.assign(c=frame['a'] * 2)")
    result.raise_error()
    import pandas as pd

    expected = shell.user_ns["frame"].assign(c=[3.0, 5.0])
    pd.testing.assert_frame_equal(shell.user_ns["doubled"], expected)


def test_rich_outputs_come_back_as_display_data(shell, run_cell):
    shell.run_cell("import pandas as pd\nsmall = pd.DataFrame({'k': [1, 2]})")
    result, out = run_cell("%%decloud run\nsmall.assign(v=small['k'] * 10)")
    result.raise_error()
    html = [o.data for o in out.outputs if "text/html" in o.data]
    assert html and "<table" in html[0]["text/html"]


def test_matplotlib_figure_comes_back_as_png(shell, run_cell):
    result, out = run_cell(
        "%%decloud run --out ''\nimport matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [4, 1, 9])\nplt.title('t')"
    )
    result.raise_error()
    assert any("image/png" in o.data for o in out.outputs)


def test_an_exception_in_the_cell_is_shown_like_a_local_one(shell, run_cell):
    result, out = run_cell("%%decloud run\na = 1\nb = a / 0\n")
    assert isinstance(result.error_in_exec, RemoteError)
    assert result.error_in_exec.ename == "ZeroDivisionError"
    shown = out.stdout + out.stderr
    assert "ZeroDivisionError" in shown
    assert "b = a / 0" in shown  # the user's own line, from the remote traceback
    assert "decloud_magics" not in "\n".join(result.error_in_exec.traceback)


@pytest.mark.parametrize(
    "line, words",
    [
        ("%%decloud run --price lots", "not an amount"),
        ("%%decloud run --timeout -3", "--timeout must be a positive"),
        ("%%decloud run --validators 40", "--validators must be between"),
        ("%%decloud run --colour red", "unrecognized arguments"),
        ("%%decloud run --network nowhere", "Unknown network 'nowhere'"),
        ("%%decloud run --in 'not a name'", "is not a Python variable name"),
        ("%%decloud fly", "Unknown subcommand 'fly'"),
    ],
)
def test_a_bad_option_is_one_usage_error(run_cell, line, words):
    result, _ = run_cell(f"{line}\nx = 1")
    assert isinstance(result.error_in_exec, IPythonUsageError), result.error_in_exec
    assert words in str(result.error_in_exec)


def test_an_unserializable_input_names_the_variable(shell, run_cell, client):
    shell.run_cell("import threading\nguard = threading.Lock()")
    result, _ = run_cell("%%decloud run --name lock-test\nwith guard:\n    y = 1")
    error = result.error_in_exec
    assert isinstance(error, SerializationError)
    assert "'guard'" in str(error)
    history = client.ledger.history_frame()
    row = history[history["name"] == "lock-test"].iloc[0]
    assert row["status"] == "failed" and "'guard'" in row["error"]


def test_a_syntax_error_is_caught_before_anything_is_paid(run_cell):
    result, _ = run_cell("%%decloud run\ndef broken(:\n    pass")
    assert "syntax error" in str(result.error_in_exec).lower()


def test_a_cell_past_its_timeout_is_killed_and_refunded(shell, run_cell):
    magics = _magics(shell)
    client = magics.client()
    before = client.conn.market.balance()
    result, _ = run_cell("%%decloud run --timeout 2 --price 0.01 --name spin\nwhile True:\n    pass")
    error = result.error_in_exec
    assert error is not None and "timeout" in str(error)
    run = list(magics._runs.values())[-1]
    assert run.status.value == "failed"
    assert run.refunded_wei == run.price_wei  # escrow back: the worker was not paid for a killed task
    after = client.conn.market.balance()
    assert before - after == run.gas_cost_wei  # only gas was spent
    row = client.ledger.history_frame(status="failed")
    assert "spin" in set(row["name"])


def test_help_lists_the_options(shell):
    from decloud_magics.magics import DecloudMagics

    doc = DecloudMagics.decloud.__doc__
    for flag in ("--price", "--timeout", "--in", "--out", "--trust-pickle", "--validators"):
        assert flag in doc


def _magics(shell):  # type: ignore[no-untyped-def]
    from decloud_magics.magics import DecloudMagics

    return next(m for m in shell.configurables if isinstance(m, DecloudMagics))
