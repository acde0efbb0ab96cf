"""The devnet for real: anvil, js-ipfs and `decloud worker` processes, driven through ``Client("devnet")``.

One devnet (3 workers) serves the whole module, in a private DECLOUD_HOME.
Tools are installed once into ``.tools`` (or ``DECLOUD_TOOLS``); when npm
cannot install them the module is skipped with a reason that names what
failed and the command that fixes it. No assertion here is about timing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from devnet_fixture import TOOLS, private_devnet, requester_client

from decloud_magics.devnet import chain_node
from decloud_magics.devnet.cli import devnet_status
from decloud_magics.devnet.manager import Devnet, _descendants
from decloud_magics.errors import NetworkUnreachable
from decloud_magics.models import EventKind

pytestmark = pytest.mark.devnet

PRICE = "0.01ether"  # well above the gas of a claim and a submit, so a paid worker's balance rises


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    with private_devnet(tmp_path_factory.mktemp("devnet-home"), workers=3, pick_ports=False) as net:
        yield net


@pytest.fixture(scope="module")
def devnet_client(devnet: Devnet) -> Iterator[object]:
    with requester_client(devnet) as client:
        yield client


def _state(devnet: Devnet):  # type: ignore[no-untyped-def]
    state = devnet.load_state()
    assert state is not None
    return state


def _money(devnet: Devnet) -> dict[str, int]:
    """Balance plus what the contract still owes, per worker address."""
    status = devnet_status(devnet, scan_tasks=False)
    assert status is not None
    return {w.address: (w.balance_wei or 0) + (w.owed_wei or 0) for w in status.workers}


def test_up_started_everything(devnet: Devnet) -> None:
    status = devnet_status(devnet)
    assert status is not None
    assert status.chain_up and status.ipfs_up
    assert len(status.workers) == 3 and all(w.alive for w in status.workers)
    assert all(w.balance_wei for w in status.workers)
    from decloud_magics.networks import get_network

    saved = get_network("devnet")
    assert (saved.rpc_url, saved.contract, saved.ipfs_api) == (status.state.rpc_url, status.state.contract,
                                                               status.state.ipfs_api)  # fmt: skip
    for key_file in [devnet.requester_key_file(), *(Path(w.key_file) for w in status.state.workers)]:
        assert key_file.stat().st_mode & 0o777 == 0o600


def test_twenty_cells_run_on_the_workers_and_every_worker_is_paid(devnet: Devnet, devnet_client) -> None:  # type: ignore[no-untyped-def]
    before = _money(devnet)
    runs = [
        devnet_client.submit("y = x * x\nprint('square of', x)", inputs={"x": i}, timeout=30, price=PRICE)
        for i in range(20)
    ]
    for i, run in enumerate(runs):
        result = run.result(timeout=180)
        assert result.values == {"y": i * i}
        assert result.stdout == f"square of {i}\n"
    after = _money(devnet)
    served = {run.worker for run in runs}
    assert served == set(before), f"some worker served nothing: {served} vs {set(before)}"
    for address in before:
        assert after[address] > before[address], f"worker {address} was not paid"


ZERO = "0x" + "0" * 40


def test_a_killed_workers_task_is_claimed_again_after_its_lease(devnet: Devnet, devnet_client) -> None:  # type: ignore[no-untyped-def]
    state = _state(devnet)
    run = devnet_client.submit(
        "import time\ntime.sleep(4)\ndone = True", outputs=["done"], timeout=20, price=PRICE
    )
    # The devnet's workers split tasks by share and claim one only once it runs long:
    # wait for the claim to be on chain, so that its lease is what must run out.
    market = devnet_client.conn.market
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        holder, lease_expiry, _, _ = market.get_seat(run.task_id, 0) if run.task_id else (ZERO, 0, False, b"")
        if holder != ZERO:
            break
        time.sleep(0.05)
    assert holder != ZERO, "no worker claimed the task"
    assert run.worker == holder
    victim = next(w for w in state.workers if w.address == holder)
    assert victim.process is not None
    # A machine that dies takes the worker and its sandbox with it.
    doomed = [victim.process.pid, *_descendants(victim.process.pid)]
    for pid in doomed:
        os.kill(pid, signal.SIGKILL)
    gone_by = time.monotonic() + 10
    while victim.process.alive() and time.monotonic() < gone_by:
        time.sleep(0.02)
    assert not victim.process.alive()

    now = int(chain_node.rpc_call(state.rpc_url, "eth_getBlockByNumber", ["latest", False])["timestamp"], 16)
    chain_node.increase_time(
        state.rpc_url, lease_expiry - now + 2
    )  # past the lease, well before the deadline
    result = run.result(timeout=120)
    assert result.values == {"done": True}
    claims = [e for e in run.events if e.kind == EventKind.ORDER_PLACED]
    assert len(claims) == 2 and claims[-1].worker != victim.address, [e.kind for e in run.events]
    assert claims[0].worker == victim.address
    assert claims[-1].data["lease_expiry"] > lease_expiry

    repaired = devnet.up()  # brings the dead worker back, leaves the rest alone
    assert not repaired.fresh and repaired.changes == [f"restarted worker-{victim.index}"]


def test_ipfs_down_is_one_clear_sentence_and_a_restart_recovers(devnet: Devnet, devnet_client) -> None:  # type: ignore[no-untyped-def]
    node = devnet.ipfs_node()
    assert node is not None
    node.stop()
    with pytest.raises(NetworkUnreachable) as caught:
        devnet_client.submit("z = 1", timeout=20, price=PRICE)
    message = str(caught.value)
    assert "IPFS node" in message and "did not answer" in message and "decloud devnet up" in message
    assert "\n" not in message and "Traceback" not in message

    repaired = devnet.up()
    assert repaired.changes == ["restarted ipfs"]
    run = devnet_client.submit("z = 41 + 1", timeout=20, price=PRICE)
    assert run.result(timeout=120).values == {"z": 42}


def test_up_again_changes_nothing_and_status_counts_the_tasks(devnet: Devnet) -> None:
    before = _state(devnet)
    again = devnet.up()
    assert not again.fresh and again.changes == []
    assert [w.process for w in again.state.workers] == [w.process for w in before.workers]
    out = subprocess.run(
        [sys.executable, "-m", "decloud_magics.cli", "devnet", "status"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 of 3 running" in out.stdout
    status = devnet_status(devnet)
    assert status is not None and status.tasks is not None
    assert status.tasks.get("completed", 0) >= 22 and status.task_count >= 22


def test_a_failed_start_leaves_nothing_running(
    devnet: Devnet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DECLOUD_HOME", str(tmp_path))
    other = Devnet(TOOLS)
    port = chain_node.pick_port(0)
    with pytest.raises(NetworkUnreachable, match="No IPFS node answers"):
        other.up(workers=1, chain_port=port, ipfs_api=f"http://127.0.0.1:{chain_node.pick_port(0)}")
    # The chain node was started before the IPFS check failed; it must be gone again.
    assert chain_node.chain_id(f"http://127.0.0.1:{port}") is None
    assert other._children == [], "a started process was not stopped and reaped"
    assert other.load_state() is None


def test_a_second_devnet_on_your_own_ipfs_node_leaves_that_node_running(
    devnet: Devnet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from decloud_magics import Client
    from decloud_magics.devnet.manager import ipfs_answers
    from decloud_magics.keys import load_key_file

    shared_ipfs = _state(devnet).ipfs_api  # stands in for a Kubo daemon the user runs
    monkeypatch.setenv("DECLOUD_HOME", str(tmp_path))
    other = Devnet(TOOLS)
    try:
        started = other.up(workers=1, ipfs_api=shared_ipfs)
        assert started.state.ipfs_external and started.state.rpc_url != _state(devnet).rpc_url
        with Client("devnet", key=load_key_file(other.requester_key_file())) as client:
            assert client.submit("w = 6 * 7", timeout=20).result(timeout=120).values == {"w": 42}
    finally:
        assert other.down(grace=5) == []
    assert ipfs_answers(shared_ipfs), "down stopped an IPFS node it did not start"


def test_down_leaves_no_process(devnet: Devnet) -> None:
    state = _state(devnet)
    procs = [
        state.chain,
        *([state.ipfs] if state.ipfs else []),
        *(w.process for w in state.workers if w.process),
    ]
    pids = [p.pid for p in procs] + [
        pid for w in state.workers if w.process for pid in _descendants(w.process.pid)
    ]
    assert devnet.down(grace=5) == []
    # A sandbox whose unshare parent was killed is orphaned, and its zombie waits for
    # init to reap it (here, within a few seconds): give init that long, not more.
    deadline = time.monotonic() + 15
    while True:
        left = []
        for pid in pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            stat = Path(f"/proc/{pid}/stat")
            left.append(stat.read_text() if stat.exists() else pid)  # says what it is and whether a zombie
        running = [entry for entry in left if not (isinstance(entry, str) and ") Z " in entry)]
        assert not running, running  # nothing may still run once down returns
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not left, left
    assert devnet.load_state() is None
    assert devnet.down() == []  # a second down has nothing to do
