"""The ``decloud`` command, run as a user runs it: a separate process."""

from __future__ import annotations

import os
import subprocess
import sys

from decloud_magics import __version__


def decloud(*args: str, home: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DECLOUD_HOME": home}
    return subprocess.run([sys.executable, "-m", "decloud_magics.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip


def test_version(tmp_path):
    done = decloud("--version", home=str(tmp_path))
    assert done.returncode == 0 and done.stdout.strip() == f"decloud {__version__}"


def test_run_a_file_prints_what_came_back(tmp_path):
    script = tmp_path / "job.py"
    script.write_text("import math\nresult = math.factorial(10)\nprint('computed', result)\n")
    done = decloud("run", str(script), "--timeout", "30", home=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "computed 3628800" in done.stdout
    assert "result = 3628800" in done.stdout
    assert "completed" in done.stderr  # progress lines go to stderr


def test_run_a_failing_file_exits_non_zero_with_the_remote_traceback(tmp_path):
    script = tmp_path / "bad.py"
    script.write_text("x = 1\ny = x / 0\n")
    done = decloud("run", str(script), home=str(tmp_path))
    assert done.returncode == 1
    assert "ZeroDivisionError" in done.stderr and "y = x / 0" in done.stderr


def test_demo_runs_cells_on_the_local_network(tmp_path):
    done = decloud("demo", home=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "stdout: sum is 45" in done.stdout
    assert "back in the namespace: total = 45" in done.stdout
    assert "remote error: ZeroDivisionError" in done.stdout
