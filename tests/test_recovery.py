"""Runs outlive their kernel: real ipykernel processes on a real devnet, restarted and doubled.

Each test drives ``python3`` kernels over ZMQ with ``jupyter_client`` exactly as
a notebook frontend does, and judges only what a frontend would receive on
iopub: stream text, the ``text/plain`` of displays and display updates, and
the outputs an ``ipywidgets.Output`` is given (its ``comm_msg`` state).
The kernels share the devnet's DECLOUD_HOME, so they find the ``devnet``
network, its funded requester key and one ledger. Every wait has a timeout;
no assertion is about timing.
"""

from __future__ import annotations

import os
import queue
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from devnet_fixture import ROOT, private_devnet

from decloud_magics.devnet import chain_node
from decloud_magics.devnet.manager import Devnet
from decloud_magics.ledger import Ledger

pytestmark = pytest.mark.devnet

RUN_ID = re.compile(r"\[decloud ([0-9a-f]{12})\]")
CELL_TIMEOUT = 180.0  # one cell, including a synchronous run on the devnet
LANDING_TIMEOUT = 120.0  # from submission to the value bound in the kernel


# -- the devnet -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    with private_devnet(tmp_path_factory.mktemp("recovery-home"), workers=2) as net:
        yield net


@pytest.fixture(scope="module")
def home(devnet: Devnet) -> Path:
    return devnet.dir.parent


@pytest.fixture(scope="module")
def ledger(home: Path) -> Iterator[Ledger]:
    with Ledger(home / "ledger.sqlite") as opened:
        yield opened


# -- real kernels -----------------------------------------------------------------------


def _text(msg: dict[str, Any]) -> str:
    """What a frontend shows for one iopub message, as text."""
    kind, content = msg["msg_type"], msg["content"]
    if kind == "stream":
        return str(content.get("text", ""))
    if kind in ("display_data", "update_display_data", "execute_result"):
        return str(content.get("data", {}).get("text/plain", ""))
    if kind == "error":
        return f"{content.get('ename')}: {content.get('evalue')}\n" + "\n".join(content.get("traceback", []))
    if kind == "comm_msg":  # an ipywidgets.Output receiving outputs after its cell ended
        outputs = content.get("data", {}).get("state", {}).get("outputs") or []
        return "".join(str(o.get("text") or o.get("data", {}).get("text/plain", "")) for o in outputs)
    return ""


@dataclass
class Cell:
    status: str  # of the execute_reply: ok, error
    messages: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def text(self) -> str:
        return "".join(_text(m) for m in self.messages)


class Kernel:
    """One ipykernel process with the python3 kernelspec, and everything it sent on iopub."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        from jupyter_client import KernelManager

        self.messages: list[dict[str, Any]] = []  # every iopub message, in the order it came
        self._replies: dict[str, str] = {}
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=env, cwd=str(cwd))
        self.kc = self.km.client()
        self.kc.start_channels()
        try:
            self.kc.wait_for_ready(timeout=120)
            where = self.execute("import decloud_magics; print(decloud_magics.__file__)").text.strip()
            assert Path(where).is_relative_to(ROOT), f"the kernel imports {where}, not the package in {ROOT}"
        except BaseException:
            self.shutdown()
            raise

    def submit(self, code: str) -> str:
        # A failing cell must not abort the cells queued behind it: each one is judged on its own.
        return str(self.kc.execute(code, stop_on_error=False))

    def collect(self, msg_ids: list[str], timeout: float = CELL_TIMEOUT) -> list[Cell]:
        """Wait for queued cells to finish; each Cell holds its own outputs and its reply's status."""
        waiting = set(msg_ids)
        end = time.monotonic() + timeout
        while waiting:
            msg = self._next(end, f"cells still running after {timeout:g} s")
            parent = msg["parent_header"].get("msg_id")
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                waiting.discard(parent)
        while not all(m in self._replies for m in msg_ids):
            try:
                reply = self.kc.get_shell_msg(timeout=max(0.1, end - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no execute_reply within {timeout:g} s") from None
            self._replies[reply["parent_header"].get("msg_id")] = reply["content"]["status"]
        return [
            Cell(self._replies[mid], [m for m in self.messages if m["parent_header"].get("msg_id") == mid])
            for mid in msg_ids
        ]

    def execute(self, code: str, timeout: float = CELL_TIMEOUT) -> Cell:
        return self.collect([self.submit(code)], timeout)[0]

    def ok(self, code: str, timeout: float = CELL_TIMEOUT) -> Cell:
        cell = self.execute(code, timeout)
        assert cell.status == "ok", f"{code!r} failed:\n{cell.text}"
        return cell

    def wait_for_text(
        self, pattern: str, kinds: tuple[str, ...] = (), timeout: float = LANDING_TIMEOUT
    ) -> str:
        """Wait until an output matches ``pattern``, whenever it came and whichever cell it belongs to.

        ``kinds`` narrows it to those iopub message types.
        """
        end = time.monotonic() + timeout
        seen = 0
        while True:
            for msg in self.messages[seen:]:
                if (not kinds or msg["msg_type"] in kinds) and re.search(pattern, _text(msg)):
                    return _text(msg)
            seen = len(self.messages)
            said = "".join(_text(m) for m in self.messages)[-3000:]
            self._next(end, f"no output matched {pattern!r} within {timeout:g} s; the kernel said:\n{said}")

    def _next(self, end: float, why: str) -> dict[str, Any]:
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(why)
            try:
                msg = self.kc.get_iopub_msg(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            self.messages.append(msg)
            return msg

    def restart(self) -> None:
        self.km.restart_kernel(now=True)
        self.kc.wait_for_ready(timeout=120)

    def shutdown(self) -> None:
        self.kc.stop_channels()
        if self.km.has_kernel:
            self.km.shutdown_kernel(now=True)


@pytest.fixture
def start_kernel(home: Path, tmp_path: Path) -> Iterator[Callable[..., Kernel]]:
    started: list[Kernel] = []

    def start(**extra_env: str) -> Kernel:
        # No key reaches the kernel but the devnet's own (and those a test passes).
        env = {k: v for k, v in os.environ.items() if not k.startswith("DECLOUD_")}
        env.update(
            DECLOUD_HOME=str(home),
            PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
            IPYTHONDIR=str(tmp_path / "ipython"),  # no profile or startup file of the machine's user
            **extra_env,
        )
        kernel = Kernel(env, tmp_path)  # a cwd without a .env file
        started.append(kernel)
        return kernel

    yield start
    for kernel in started:
        kernel.shutdown()


StartKernel = Callable[..., Kernel]


def _load(kernel: Kernel) -> Cell:
    loaded = kernel.ok("%load_ext decloud_magics")
    kernel.ok("%decloud network use devnet")
    return loaded


def _run_id(cell: Cell) -> str:
    found = RUN_ID.search(cell.text)
    assert found, f"no run panel under the cell:\n{cell.text}"
    return found.group(1)


SLOW_CELL = """%%decloud run --async --name {name}
import time
time.sleep(4)
print('{name} says hi')
{name}_value = 42
"""


# -- the scenarios ----------------------------------------------------------------------


def test_a_restarted_kernel_reattaches_and_the_value_lands(start_kernel: StartKernel, ledger: Ledger) -> None:
    kernel = start_kernel()
    _load(kernel)
    run_id = _run_id(kernel.ok(SLOW_CELL.format(name="slow")))
    kernel.restart()  # the run is still on the worker: it sleeps for seconds

    loaded = kernel.ok("%load_ext decloud_magics")
    assert re.search(rf"re-attached to \d+ run\(s\) on devnet: .*{run_id}", loaded.text), loaded.text
    assert re.search(rf"\[decloud {run_id}\].*created", loaded.text), f"no panel for the run:\n{loaded.text}"

    # It ends on the kernel's own loop, with no cell running: the panel says so, and the cell's
    # output goes into the panel's output area (a stream message now would belong to a finished
    # cell, which a frontend no longer shows), and the value is bound before the next cell.
    kernel.wait_for_text(rf"decloud run slow {run_id}: completed .*set .*slow_value")
    kernel.wait_for_text(r"slow says hi", kinds=("comm_msg",))
    assert kernel.ok("print(slow_value)").text == "42\n"

    history = kernel.ok("%decloud history").text
    row = next((line for line in history.splitlines() if run_id in line), "")
    assert re.search(r"\bslow\s+devnet\s+completed\b", row), history
    record = ledger.get_run(run_id)
    assert record is not None and record.status.value == "completed"


def test_a_run_that_completed_while_no_kernel_ran_is_picked_up(
    start_kernel: StartKernel, devnet: Devnet, ledger: Ledger, tmp_path: Path
) -> None:
    from decloud_magics import Client
    from decloud_magics.chain.market import ChainStatus, wait_until
    from decloud_magics.keys import load_key_file

    kernel = start_kernel()
    _load(kernel)
    run_id = _run_id(kernel.ok(SLOW_CELL.format(name="late")))
    kernel.shutdown()

    record = ledger.get_run(run_id)
    assert record is not None and record.task_id is not None
    task_id = record.task_id
    # A throwaway ledger: the probe only reads the chain, and the kernels' ledger must stay untouched.
    key = load_key_file(devnet.requester_key_file())
    with Client("devnet", ledger=Ledger(tmp_path / "probe.sqlite"), key=key) as probe:
        market = probe.conn.market
        completed = wait_until(lambda: market.get_task(task_id).status == ChainStatus.COMPLETED, 120, 0.2)
    assert completed, f"task {task_id} did not complete on chain"
    unseen = ledger.get_run(run_id)
    assert unseen is not None and not unseen.is_final, "with no kernel alive, nothing may record the end"

    kernel = start_kernel()
    loaded = kernel.ok("%load_ext decloud_magics")
    assert re.search(rf"re-attached to \d+ run\(s\) on devnet: .*{run_id}", loaded.text), loaded.text
    # Picked up from the chain during %load_ext: its panel already tells how it ended.
    assert re.search(rf"decloud run late {run_id}: completed", loaded.text), loaded.text
    kernel.wait_for_text(rf"decloud run late {run_id}: completed .*set .*late_value")
    kernel.wait_for_text(r"late says hi", kinds=("comm_msg",))
    assert kernel.ok("print(late_value)").text == "42\n"

    done = ledger.get_run(run_id)
    assert done is not None and done.status.value == "completed" and done.result_cid
    kinds = [e.kind.value for e in ledger.events(run_id)]
    assert kinds[0] == "created" and "order_placed" in kinds and kinds[-1] == "completed", kinds
    assert kinds.count("completed") == 1, kinds


def test_a_second_kernel_leaves_the_first_kernels_runs_alone(start_kernel: StartKernel) -> None:
    first = start_kernel()
    _load(first)
    run_id = _run_id(first.ok(SLOW_CELL.format(name="mine")))

    second = start_kernel()
    loaded = second.ok("%load_ext decloud_magics")
    assert "re-attached" not in loaded.text, loaded.text

    first.wait_for_text(rf"decloud run mine {run_id}: completed .*set .*mine_value")
    assert first.ok("print(mine_value)").text == "42\n"
    assert second.ok("print('mine_value' in globals())").text == "False\n"
    assert "mine says hi" not in "".join(_text(m) for m in second.messages)


def test_two_kernels_writing_the_ledger_at_once_lose_nothing(
    start_kernel: StartKernel, devnet: Devnet, ledger: Ledger
) -> None:
    # The second kernel pays from an account of its own: two kernels sending from one
    # account race for its transaction nonces on chain, which is not what this test is about.
    other_key = "0x" + secrets.token_hex(32)
    state = devnet.load_state()
    assert state is not None
    chain_node.fund(state.rpc_url, {chain_node.address_of(other_key): 100 * 10**18})
    kernels = [start_kernel(), start_kernel(DECLOUD_PRIVATE_KEY=other_key)]
    for kernel in kernels:
        _load(kernel)
    before = {r.run_id for r in _all_runs(ledger)}

    def five_cells(k: int) -> list[Cell]:
        code = "%%decloud run --name k{k}-{i}\nv{i} = {i} * {factor}\nprint('k{k} cell {i} =', v{i})"
        ids = [kernels[k].submit(code.format(k=k, i=i, factor=k + 10)) for i in range(5)]
        return kernels[k].collect(ids, timeout=2 * CELL_TIMEOUT)

    with ThreadPoolExecutor(2) as pool:
        cells = list(pool.map(five_cells, range(2), timeout=3 * CELL_TIMEOUT))

    for k, kernel in enumerate(kernels):
        for i, cell in enumerate(cells[k]):
            assert cell.status == "ok", cell.text
            assert f"k{k} cell {i} = {i * (k + 10)}\n" in cell.text, cell.text
        shown = kernel.ok("print(v0, v1, v2, v3, v4)").text
        assert shown == " ".join(str(i * (k + 10)) for i in range(5)) + "\n"

    new = [r for r in _all_runs(ledger) if r.run_id not in before]
    assert sorted(r.name for r in new) == sorted(f"k{k}-{i}" for k in range(2) for i in range(5))
    for record in new:
        assert record.status.value == "completed", (record.name, record.status, record.error)
        kinds = [e.kind.value for e in ledger.events(record.run_id)]
        assert kinds[0] == "created" and "order_placed" in kinds and kinds[-1] == "completed", record.name
        assert record.task_id is not None and record.result_cid
    with closing(sqlite3.connect(ledger.path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _all_runs(ledger: Ledger) -> list[Any]:
    return [ledger.get_run(run_id) for (run_id,) in ledger.query("SELECT run_id FROM runs")]
