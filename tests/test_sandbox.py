"""The sandbox: a cell runs like in IPython, and nothing it does can hurt the worker.

Every hostile test ends by running a normal task, to show the worker is fine.
No test asserts a duration; every run has a timeout so none can hang.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from decloud_magics.package import (
    ResultPackage,
    TaskPackage,
    build_task_package,
    decode_result,
    decode_values,
    encode_task,
    result_digest,
)
from decloud_magics.worker.sandbox import SandboxLimits, network_isolation_available, run_in_sandbox


def run(
    code: str, namespace: dict[str, Any] | None = None, *, timeout: float = 60, **kw: Any
) -> ResultPackage:
    trust = kw.pop("trust_pickle", False)
    outputs = kw.pop("outputs", None)
    limits = SandboxLimits(**kw) if kw else None
    _, task = build_task_package(code, namespace or {}, trust_pickle=trust, outputs=outputs)
    return decode_result(run_in_sandbox(task, timeout=timeout, limits=limits))


def assert_worker_still_fine() -> None:
    res = run("x = 6 * 7\nprint('ok', x)")
    assert res.failure is None and res.error is None
    assert res.stdout == "ok 42\n"
    assert decode_values(res, trust_pickle=False) == {"x": 42}


def parent_of(pid: str) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[1])


def processes_with(marker: str) -> list[str]:
    """Live processes whose command line carries ``marker`` (zombies have none)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    if marker.encode() in fh.read():
                        found.append(pid)
            except OSError:
                continue
    return found


# -- running a cell like IPython --------------------------------------------------------


def test_print_and_values_come_back() -> None:
    lines: list[str] = []
    _, task = build_task_package("y = x * 2\nprint('hello', y)\nprint('bye')", {"x": 21})
    res = decode_result(run_in_sandbox(task, timeout=60, on_stdout=lines.append))
    assert res.stdout == "hello 42\nbye\n"
    assert lines == ["hello 42", "bye"]
    assert res.exit_status == 0 and res.failure is None and res.error is None
    assert decode_values(res, trust_pickle=False) == {"y": 42}
    assert res.truncated == {"stdout": False, "stderr": False}


def test_traceback_shows_the_users_line_and_source() -> None:
    res = run("a = 1\n\ndef f(v):\n    return v / 0\n\nb = f(a)\n")
    assert res.error is not None and res.exit_status == 1
    assert (res.error.ename, res.error.evalue) == ("ZeroDivisionError", "division by zero")
    text = "\n".join(res.error.traceback)
    assert "Cell line 6" in text and "----> 6 b = f(a)" in text
    assert "Cell line 4, in f" in text and "----> 4     return v / 0" in text
    assert "decloud_magics" not in text and "runtime.py" not in text
    assert text.rstrip().endswith("ZeroDivisionError: division by zero")
    assert decode_values(res, trust_pickle=False) == {"a": 1}  # what ran before the error is kept


def test_library_frames_have_short_paths() -> None:
    res = run("import json\njson.loads('{bad')")
    text = "\n".join(res.error.traceback)  # type: ignore[union-attr]
    assert "File json/decoder.py:" in text or "File json/__init__.py:" in text
    assert res.error.ename == "JSONDecodeError"  # type: ignore[union-attr]


def test_chained_exceptions() -> None:
    res = run("try:\n    {}['k']\nexcept KeyError as e:\n    raise ValueError('bad key') from e")
    text = "\n".join(res.error.traceback)  # type: ignore[union-attr]
    assert (
        "KeyError: 'k'" in text and "direct cause" in text and text.rstrip().endswith("ValueError: bad key")
    )


def test_last_expression_dataframe_has_html() -> None:
    res = run("import pandas as pd\ndf = pd.DataFrame({'a': [1, 2]})\ndf")
    assert res.error is None, res.error
    (shown,) = res.displays
    assert "<table" in shown["data"]["text/html"]
    assert "a" in shown["data"]["text/plain"]


def test_semicolon_hides_the_last_expression_and_display_shows() -> None:
    res = run("x = 'ünï'; x;")
    assert res.displays == []
    res = run("display(1, 'two')\nfrom IPython.display import display as d, HTML\nd(HTML('<b>hi</b>'))\n3")
    data = [d["data"] for d in res.displays]
    assert [x["text/plain"] for x in data] == ["1", "'two'", "<IPython.core.display.HTML object>", "3"]
    assert data[2]["text/html"] == "<b>hi</b>"


def test_matplotlib_figure_comes_back_as_png() -> None:
    res = run("import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()\n")
    assert res.error is None, res.error
    pngs = [d for d in res.displays if "image/png" in d["data"]]
    assert len(pngs) == 1
    import base64

    assert base64.b64decode(pngs[0]["data"]["image/png"]).startswith(b"\x89PNG")
    assert "non-interactive" not in res.stderr
    assert (
        " at 0x" not in res.displays[0]["data"]["text/plain"]
        or "0x…" in res.displays[0]["data"]["text/plain"]
    )


def test_top_level_await() -> None:
    res = run("import asyncio\nasync def f():\n    await asyncio.sleep(0)\n    return 5\nr = await f()\nr")
    assert res.error is None, res.error
    assert decode_values(res, trust_pickle=False)["r"] == 5


def test_outputs_policy() -> None:
    res = run("def f():\n    return 1\nclass C:\n    pass\nn = 3")
    assert decode_values(res, trust_pickle=False) == {"n": 3}
    assert "--trust-pickle" in res.value_errors["f"] and "class" in res.value_errors["C"]
    assert res.failure is None
    res = run("def f():\n    return 1\nn = 3", trust_pickle=True)
    assert decode_values(res, trust_pickle=True)["f"]() == 1
    res = run("y = 1", outputs=["y", "never"])
    assert res.value_errors == {"never": "'never' was never assigned by the cell."}


def test_unsafe_output_without_trust_is_reported_not_failed() -> None:
    res = run("import threading\nimport datetime\nwhen = datetime.date(2024, 1, 1)\nok = 1")
    assert "--trust-pickle" in res.value_errors["when"]
    assert decode_values(res, trust_pickle=False)["ok"] == 1 and res.failure is None


def test_inputs_of_every_codec_reach_the_cell() -> None:
    import numpy as np
    import pandas as pd

    namespace = {
        "arr": np.arange(4),
        "df": pd.DataFrame({"a": [1, 2]}),
        "f": lambda v: v + 1,
        "np": np,
        "blob": b"xy",
        "t": (1, 2),
    }
    res = run("out = [int(arr.sum()), int(df.a.sum()), f(1), np.__name__, blob.decode(), t]", namespace)
    assert res.error is None, res.error
    assert decode_values(res, trust_pickle=False)["out"] == [6, 3, 2, "numpy", "xy", (1, 2)]


def test_stdin_is_empty() -> None:
    res = run("input()")
    assert res.error is not None and res.error.ename == "EOFError"


def test_runtime_syntax_error_is_reported() -> None:
    res = decode_result(run_in_sandbox(encode_task(TaskPackage("x = (")), timeout=30))
    assert res.error is not None and res.error.ename == "SyntaxError"


def test_same_cell_same_digest() -> None:
    code = (
        "import matplotlib.pyplot as plt\n"
        "s = {'alpha', 'beta', 'gamma', 'delta'}\n"
        "print(s, hash('x'))\n"
        "plt.plot([1, 2])\n"
        "obj = object()\n"
        "obj\n"
    )
    _, task = build_task_package(code, {})
    first, second = run_in_sandbox(task, timeout=60), run_in_sandbox(task, timeout=60)
    assert first != second  # timings differ
    assert result_digest(first) == result_digest(second)


# -- a stranger's code cannot hurt the worker ------------------------------------------


def test_timeout_kills_the_process_group_and_forked_children() -> None:
    marker = f"decloud-test-{uuid.uuid4().hex}"
    code = (
        "import os, subprocess, sys\n"
        "print('looping', flush=True)\n"
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', {marker!r}])\n"
        "if os.fork() == 0:\n"
        "    os.setsid()  # leaves the process group\n"
        f"    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(600)', {marker!r}])\n"
        "while True:\n"
        "    pass\n"
    )
    res = run(code, timeout=2)
    assert res.failure == "The task was killed after its 2 s wall-clock timeout."
    assert res.stdout == "looping\n"  # what it printed before the kill is kept
    assert res.exit_status < 0
    deadline = time.monotonic() + 10
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    if processes_with(marker) and not res.sandbox.get("pid_namespace"):
        pytest.skip("LOUD: no PID namespace here, so a child that called setsid() outlives the kill")
    assert processes_with(marker) == []
    assert_worker_still_fine()


def test_children_left_running_after_a_normal_end_are_killed() -> None:
    marker = f"decloud-test-{uuid.uuid4().hex}"
    code = f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', {marker!r}])\n"
    res = run(code, timeout=30)
    assert res.failure is None and res.error is None
    deadline = time.monotonic() + 10
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_with(marker) == []


def test_memory_hog_gets_a_clear_failure() -> None:
    res = run("x = bytearray(4 * 1024**3)", memory_mb=512, timeout=60)
    assert res.error is not None and res.error.ename == "MemoryError"
    assert res.failure == "The cell ran out of memory: it needed more than the sandbox's 512 MB."
    res = run("import numpy as np\nx = np.ones(2**29)", memory_mb=512, timeout=60)
    assert res.failure == "The cell ran out of memory: it needed more than the sandbox's 512 MB."
    assert_worker_still_fine()


def test_disk_filler_gets_a_clear_failure() -> None:
    code = (
        "with open('big.bin', 'wb') as fh:\n    for _ in range(100):\n        fh.write(b'0' * 1024 * 1024)\n"
    )
    res = run(code, file_size_mb=10, timeout=60)
    assert res.failure == "The cell tried to write a file larger than the sandbox's 10 MB limit."
    assert res.error is not None and res.error.ename == "OSError"
    assert_worker_still_fine()


def test_cpu_limit() -> None:
    res = run("while True:\n    pass", cpu_seconds=1, timeout=60)
    assert res.failure == "The task was stopped after using its 1 s of CPU time."
    assert_worker_still_fine()


def test_fork_bomb_is_stopped() -> None:
    probe = run("pass", max_processes=16)
    if not probe.sandbox.get("pids_cgroup") and os.geteuid() == 0:
        pytest.skip(
            "LOUD: root worker without a writable pids cgroup: RLIMIT_NPROC does not bind root, "
            "so only the timeout would stop a fork bomb; not running one on this machine"
        )
    # Children hold their slot (sleep) so the runtime itself meets the limit.
    bomb = (
        "import os, time\nwhile True:\n    if os.fork() == 0:\n        time.sleep(60)\n        os._exit(0)\n"
    )
    res = run(bomb, max_processes=16, timeout=20)
    assert res.failure == "The cell tried to run more than the sandbox's 16 processes."
    assert res.error is not None and res.error.ename == "BlockingIOError"
    res = run(
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        max_processes=16,
        timeout=3,
    )
    assert res.failure == "The task was killed after its 3 s wall-clock timeout."
    assert_worker_still_fine()


def test_worker_environment_is_not_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DECLOUD_PRIVATE_KEY", "deadbeef")
    code = (
        "import os\n"
        "env = dict(os.environ)\n"
        "try:\n"
        "    parent = open(f'/proc/{worker_pid}/environ', 'rb').read().decode('latin-1')\n"
        "except OSError as exc:\n"
        "    parent = type(exc).__name__\n"
        "print(env, parent)\n"
    )
    res = run(code, {"worker_pid": os.getpid()})
    assert "deadbeef" not in res.stdout
    env = decode_values(res, trust_pickle=False)["env"]
    assert "DECLOUD_PRIVATE_KEY" not in env
    assert set(env) <= {
        "PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "MPLBACKEND", "PYTHONHASHSEED", "PYTHONUTF8",
        "PYTHONDONTWRITEBYTECODE", "PYTHONNOUSERSITE", "PYTHONSAFEPATH", "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS", "ARROW_DEFAULT_MEMORY_POOL",
        "MALLOC_ARENA_MAX",
    }  # fmt: skip
    if res.sandbox.get("pid_namespace"):
        assert decode_values(res, trust_pickle=False)["parent"] in ("FileNotFoundError", "PermissionError")
    assert_worker_still_fine()


def test_worker_key_file_is_never_pointed_to(tmp_path: Path) -> None:
    # Nothing handed to the cell names the key file; that the cell cannot read it
    # even by its path (Landlock) is tested in test_confinement.py.
    key = tmp_path / "worker.key"
    key.write_text("deadbeef")
    key.chmod(0o600)
    code = (
        "import os, sys\n"
        "home, cwd, argv = os.environ['HOME'], os.getcwd(), list(sys.argv)\n"
        "listing = sorted(os.listdir('.'))\n"
        "env = dict(os.environ)\n"
    )
    res = run(code)
    values = decode_values(res, trust_pickle=False)
    assert values["home"] == values["cwd"] and str(tmp_path) not in values["cwd"]
    assert values["listing"] == []  # the task file is removed before the cell runs
    assert values["argv"] == ["<cell>"]
    assert str(key) not in repr(values) and "deadbeef" not in repr(values)
    assert not Path(values["cwd"]).exists()  # the scratch dir is gone


def test_network_is_cut_off() -> None:
    if not network_isolation_available():
        pytest.skip(
            "LOUD: `unshare --user --net` does not work on this machine; sandboxes share the worker's network"
        )
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    code = (
        "import socket\n"
        "try:\n"
        "    socket.create_connection(('127.0.0.1', port), timeout=3)\n"
        "    outcome = 'connected'\n"
        "except OSError as exc:\n"
        "    outcome = type(exc).__name__\n"
    )
    try:
        res = run(code, {"port": port})
        assert res.sandbox["network_isolated"] is True
        assert decode_values(res, trust_pickle=False)["outcome"] != "connected"
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()
    assert_worker_still_fine()


def test_stdout_is_capped() -> None:
    lines: list[str] = []
    _, task = build_task_package("for i in range(2000):\n    print('x' * 99)", {})
    res = decode_result(
        run_in_sandbox(task, timeout=60, limits=SandboxLimits(stdout_cap_bytes=1000), on_stdout=lines.append)
    )
    assert res.truncated["stdout"] is True and res.truncated["stderr"] is False
    assert len(res.stdout) == 1000 and res.stdout.startswith("x" * 99 + "\n")
    assert 0 < len(lines) <= 10
    assert_worker_still_fine()


def test_os_exit_and_garbage_results_are_failures() -> None:
    res = run("import os\nprint('bye')\nos._exit(3)")
    assert res.failure == (
        "The task's process ended (exit status 3) before it reported a result; the cell may have called os._exit."
    )
    assert res.stdout == "bye\n" and res.exit_status == 3
    code = "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'garbage')\n    except OSError:\n        pass\n"
    res = run(code)
    assert res.failure is not None and "malformed result" in res.failure
    assert_worker_still_fine()


def test_callback_errors_do_not_break_the_run() -> None:
    def broken(line: str) -> None:
        raise RuntimeError("worker bug")

    _, task = build_task_package("print(1)\nprint(2)", {})
    res = decode_result(run_in_sandbox(task, timeout=60, on_stdout=broken))
    assert res.stdout == "1\n2\n" and res.failure is None


def test_input_that_cannot_be_restored_is_a_failure() -> None:
    from decloud_magics.codecs import Encoded

    # A pickle that names a module only the notebook has (GLOBAL opcode, then STOP).
    data = b"cmodule_only_the_notebook_has\nLocal\n."
    pkg = TaskPackage("y = thing", {"thing": Encoded("pickle", data, "module_only_the_notebook_has.Local")})
    res = decode_result(run_in_sandbox(encode_task(pkg), timeout=60))
    assert res.failure is not None
    assert res.failure.startswith("The worker could not start the cell: Variable 'thing'")
    assert "No module named 'module_only_the_notebook_has'" in res.failure


def test_a_dying_worker_takes_its_sandbox_along() -> None:
    marker = f"decloud-test-{uuid.uuid4().hex}"
    # Split, so that only the cell's child carries the whole marker (the worker's command line has the cell).
    spin = f"[sys.executable, '-c', 'while True: pass', {marker[:8]!r} + {marker[8:]!r}]"
    cell = f"import subprocess, sys\nsubprocess.run({spin})\n"
    worker = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from decloud_magics.package import build_task_package
        from decloud_magics.worker.sandbox import run_in_sandbox
        run_in_sandbox(build_task_package({cell!r}, {{}})[1], timeout=120)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", worker])
    try:
        deadline = time.monotonic() + 60
        while not processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert processes_with(marker), "the cell never started"
        zygotes = [pid for pid in processes_with("decloud_magics.worker.zygote") if parent_of(pid) == proc.pid]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_with(marker) == []
    assert not set(zygotes) & set(processes_with("decloud_magics.worker.zygote")), "the zygote outlived its worker"
    # Its scratch dir outlived it; the next worker to start sweeps it away.
    from decloud_magics.worker import sandbox

    leftovers = list(Path(tempfile.gettempdir()).glob(f"decloud-task-{proc.pid}-*"))
    assert leftovers
    sandbox._swept.clear()
    assert_worker_still_fine()
    assert not any(p.exists() for p in leftovers)


# -- warm spares: started ahead, still one process per task --------------------------------

sandbox_module = sys.modules[run_in_sandbox.__module__]

WARM_KEY = (sys.executable, False)


def spare_ready() -> Any:
    """The ready spare for the default sandbox, once it exists."""
    sandbox_module.prewarm()
    assert sandbox_module._spares.wait_ready(WARM_KEY, timeout=60), "no spare was started"
    return sandbox_module._spares._ready[WARM_KEY]


def run_warm(code: str, namespace: dict[str, Any] | None = None, **kw: Any) -> ResultPackage:
    """``run``, checking that a spare started ahead served it."""
    spare_ready()
    served = dict(sandbox_module._spares.served)
    res = run(code, namespace, **kw)
    assert sandbox_module._spares.served == {**served, "warm": served["warm"] + 1}
    return res


def test_a_warm_spare_serves_the_run_and_another_is_started() -> None:
    first = spare_ready()
    res = run_warm("y = 1\nprint('hi')")
    assert res.failure is None and res.error is None and res.stdout == "hi\n"
    assert decode_values(res, trust_pickle=False) == {"y": 1}
    assert spare_ready() is not first
    assert not Path(first.scratch).exists()


def test_each_task_still_gets_a_fresh_process() -> None:
    # With a PID namespace every sandbox is pid 1, so its namespace tells them apart too.
    code = (
        "import os, sys\n"
        "print(os.getpid(), os.readlink('/proc/self/ns/pid'))\n"
        "leftover = hasattr(sys, 'decloud_test_mark')\n"
        "sys.decloud_test_mark = True\n"
    )
    first, second = run_warm(code), run_warm(code)
    assert first.stdout and second.stdout and first.stdout != second.stdout
    for res in (first, second):
        assert decode_values(res, trust_pickle=False)["leftover"] is False


def test_limits_apply_on_a_warm_process() -> None:
    res = run_warm("x = bytearray(4 * 1024**3)", memory_mb=512, timeout=60)
    assert res.failure == "The cell ran out of memory: it needed more than the sandbox's 512 MB."
    res = run_warm(
        "with open('big.bin', 'wb') as fh:\n    fh.write(b'0' * 20 * 1024 * 1024)", file_size_mb=10
    )
    assert res.failure == "The cell tried to write a file larger than the sandbox's 10 MB limit."
    res = run_warm("print('looping', flush=True)\nwhile True:\n    pass", timeout=2)
    assert res.failure == "The task was killed after its 2 s wall-clock timeout."
    assert res.stdout == "looping\n"
    res = run_warm("import os\nlisting = os.listdir('.')")
    assert decode_values(res, trust_pickle=False)["listing"] == []  # the task file is gone before the cell
    assert run_warm("input()").error.ename == "EOFError"  # type: ignore[union-attr]
    assert_worker_still_fine()


def test_warm_process_joins_the_pids_cgroup() -> None:
    probe = run_warm("pass", max_processes=16)
    if not probe.sandbox.get("pids_cgroup"):
        pytest.skip("LOUD: no writable pids cgroup here; the fork bomb test covers RLIMIT_NPROC")
    bomb = (
        "import os, time\nwhile True:\n    if os.fork() == 0:\n        time.sleep(60)\n        os._exit(0)\n"
    )
    res = run_warm(bomb, max_processes=16, timeout=20)
    assert res.failure == "The cell tried to run more than the sandbox's 16 processes."
    assert_worker_still_fine()


def test_a_spare_waits_inside_its_own_pids_cgroup() -> None:
    """Joining a cgroup costs milliseconds of kernel time: a spare pays them before its task comes."""
    spare = spare_ready()
    if spare.cgroup is None:
        pytest.skip("LOUD: no writable pids cgroup here; the fork bomb test covers RLIMIT_NPROC")
    procs = Path(spare.cgroup, "cgroup.procs")
    deadline = time.monotonic() + 30
    while not procs.read_text().split() and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = procs.read_text().split()  # the runtime's process (and, when forked, the one waiting for it)
    assert pids and all(b"decloud_magics.worker." in Path(f"/proc/{pid}/cmdline").read_bytes() for pid in pids)
    assert Path(spare.cgroup, "pids.max").read_text().strip() == str(SandboxLimits().max_processes)
    res = run_warm("import os\nn = len(os.listdir('/proc/self/task'))", max_processes=16)
    assert res.failure is None and decode_values(res, trust_pickle=False)["n"] == 1
    assert not Path(spare.cgroup).exists()  # removed with the run


def test_a_caller_that_settles_first_starts_the_next_spare_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox_module, "REFILL_DELAY", 60.0)
    spare_ready()
    _, task = build_task_package("y = 2", {})
    res = decode_result(run_in_sandbox(task, timeout=60, refill=False))
    assert decode_values(res, trust_pickle=False) == {"y": 2}
    assert WARM_KEY not in sandbox_module._spares._ready and WARM_KEY not in sandbox_module._spares._making
    sandbox_module.prewarm()  # what a worker calls once the result is on chain
    assert sandbox_module._spares.wait_ready(WARM_KEY, timeout=60)


def test_the_environment_of_a_warm_process_is_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DECLOUD_PRIVATE_KEY", "deadbeef")
    sandbox_module.shutdown_spares()  # the next spare starts while the worker holds the secret
    res = run_warm("import os\nenv = dict(os.environ)\nprint(env)")
    env = decode_values(res, trust_pickle=False)["env"]
    assert "DECLOUD_PRIVATE_KEY" not in env and "deadbeef" not in res.stdout
    assert env["HOME"] == env["TMPDIR"] and env["OMP_NUM_THREADS"] == "1"


def test_another_thread_count_starts_cold_and_the_next_spare_follows_it() -> None:
    spare_ready()
    served = dict(sandbox_module._spares.served)
    code = "import os\nn = os.environ['OMP_NUM_THREADS']"
    res = run(code, threads=2)
    assert decode_values(res, trust_pickle=False)["n"] == "2"
    assert sandbox_module._spares.served["cold"] == served["cold"] + 1
    assert sandbox_module._spares.wait_ready(WARM_KEY, timeout=60)
    assert decode_values(run(code, threads=2), trust_pickle=False)["n"] == "2"
    assert sandbox_module._spares.served["warm"] == served["warm"] + 1
    assert decode_values(run(code), trust_pickle=False)["n"] == "1"  # cold again, and the spare follows
    assert decode_values(run_warm(code), trust_pickle=False)["n"] == "1"


def test_a_dead_spare_is_replaced() -> None:
    spare = spare_ready()
    os.kill(spare.proc.pid, signal.SIGKILL)  # the process the worker knows; the rest dies with it
    deadline = time.monotonic() + 30
    while spare.usable(600) and time.monotonic() < deadline:
        time.sleep(0.05)
    served = dict(sandbox_module._spares.served)
    assert_worker_still_fine()
    assert sandbox_module._spares.served["cold"] == served["cold"] + 1
    assert not Path(spare.scratch).exists()
    assert spare_ready() is not spare
    assert_worker_still_fine()


def test_a_spare_that_dies_after_the_check_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    from decloud_magics.worker.spares import Process

    spare = spare_ready()
    os.kill(spare.proc.pid, signal.SIGKILL)
    while spare.usable(600):
        time.sleep(0.05)
    monkeypatch.setattr(Process, "usable", lambda self, max_age: True)  # the config then meets a dead pipe
    served = dict(sandbox_module._spares.served)
    assert_worker_still_fine()
    assert sandbox_module._spares.served["cold"] == served["cold"] + 1
    assert not Path(spare.scratch).exists()


def test_an_old_spare_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    spare = spare_ready()
    monkeypatch.setattr(sandbox_module._spares, "max_age", 0.0)
    served = dict(sandbox_module._spares.served)
    assert_worker_still_fine()
    assert sandbox_module._spares.served["cold"] == served["cold"] + 1
    assert not Path(spare.scratch).exists() and spare.proc.returncode is not None


def test_concurrent_runs_from_threads_all_succeed() -> None:
    from concurrent.futures import ThreadPoolExecutor

    spare_ready()
    served = dict(sandbox_module._spares.served)

    def one(i: int) -> ResultPackage:
        return run(f"y = {i} * 2\nprint('run', {i})", timeout=120)

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(one, range(6)))
    for i, res in enumerate(results):
        assert res.failure is None and res.error is None and res.stdout == f"run {i}\n"
        assert decode_values(res, trust_pickle=False) == {"y": i * 2}
    now = sandbox_module._spares.served
    assert now["warm"] - served["warm"] >= 1
    assert now["warm"] + now["cold"] == served["warm"] + served["cold"] + 6


def test_live_spares_survive_the_sweep_and_go_at_shutdown() -> None:
    spare = spare_ready()
    sandbox_module._swept.clear()
    sandbox_module._sweep_leftovers()
    assert Path(spare.scratch).exists()
    sandbox_module.shutdown_spares()
    assert not Path(spare.scratch).exists() and spare.proc.returncode is not None
    assert_worker_still_fine()


def test_spares_are_killed_when_the_worker_exits() -> None:
    worker = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from decloud_magics.worker import sandbox
        sandbox.prewarm()
        assert sandbox._spares.wait_ready({WARM_KEY!r}, timeout=60)
        spare = sandbox._spares._ready[{WARM_KEY!r}]
        print(spare.proc.pid, spare.scratch)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", worker], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    pid, scratch = done.stdout.split()
    assert not Path(scratch).exists()

    def spare_alive() -> bool:  # a zombie has no command line left
        try:
            return b"decloud_magics" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False

    deadline = time.monotonic() + 10
    while spare_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not spare_alive(), "the spare outlived its worker"


@pytest.mark.parametrize("start", ["forked", "exec'd"])
def test_both_ways_of_starting_give_the_same_sandbox(start: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Forked from the zygote where it can serve, else exec'd: the cell cannot tell the difference."""
    from decloud_magics.worker import launch

    if start == "forked" and launch._fork_server(sys.executable) is None:
        pytest.skip("LOUD: the zygote cannot serve here (no pidfds or no namespaces): sandboxes are exec'd")
    if start == "exec'd":
        monkeypatch.setattr(launch, "_no_fork", {sys.executable})
    sandbox_module.shutdown_spares()
    spare = spare_ready()
    assert (type(spare.proc).__name__ == "ForkedProc") == (start == "forked")
    monkeypatch.setenv("DECLOUD_TEST_SECRET", "hidden")
    code = (
        "import os, socket, sys\n"
        "pid, procs = os.getpid(), sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
        "home, cwd, secret = os.environ['HOME'], os.getcwd(), 'DECLOUD_TEST_SECRET' in os.environ\n"
        "try:\n    socket.create_connection(('1.1.1.1', 53), timeout=2)\n    online = True\n"
        "except OSError:\n    online = False\n"
        "print('out'); print('err', file=sys.stderr)\n"
    )
    res = run_warm(code)
    values = decode_values(res, trust_pickle=False)
    if res.sandbox["pid_namespace"]:
        assert values["pid"] == 1 and values["procs"] == [1]
    assert values["home"] == values["cwd"] and values["secret"] is False
    assert values["online"] is (not res.sandbox["network_isolated"])
    assert (res.stdout, res.stderr, res.exit_status, res.failure) == ("out\n", "err\n", 0, None)
    failed = run_warm("import os\nos._exit(3)")
    assert failed.exit_status == 3 and "exit status 3" in (failed.failure or "")
    raised = run_warm("raise ValueError('no')")
    assert raised.exit_status == 1 and raised.error is not None and raised.error.ename == "ValueError"
    assert run_warm("while True:\n    pass", timeout=2).failure == "The task was killed after its 2 s wall-clock timeout."
    sandbox_module.shutdown_spares()


def test_a_spare_confined_before_the_worker_hid_more_is_not_used() -> None:
    """A forked spare confines its files while it waits; hiding a path later makes it stale."""
    from decloud_magics.worker import landlock

    # outside every folder a task never sees (the temp dir, home, the working folder)
    secret = Path("/var/tmp") / f"decloud-test-{uuid.uuid4().hex}.txt"
    secret.write_text("for the worker only")
    try:
        stale = spare_ready()
        landlock.hide_from_tasks(str(secret))
        code = f"try:\n    seen = open({str(secret)!r}).read()\nexcept OSError as exc:\n    seen = type(exc).__name__\n"
        seen = decode_values(run(code), trust_pickle=False)["seen"]
    finally:
        secret.unlink()
    if landlock.abi_version() < 1:
        pytest.skip("THIS KERNEL HAS NO LANDLOCK (Linux 5.13+): tasks can reach the worker's files here")
    assert seen == "PermissionError"
    assert stale.proc.returncode is not None and not Path(stale.scratch).exists()  # discarded, not used
