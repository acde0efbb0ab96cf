"""``decloud devnet up | status | down``: the devnet from a shell, with progress on stderr.

Only the standard library is imported at module level: ``decloud --help``
builds this parser and must stay fast; web3 loads when a command needs it.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from .manager import Devnet
    from .state import DevnetState


def add_devnet_parser(sub: Any) -> None:
    devnet = sub.add_parser("devnet", help="run a chain node, an IPFS node and workers on this machine")
    cmds = devnet.add_subparsers(dest="devnet_command", required=True)
    up = cmds.add_parser("up", help="start the devnet (or repair a running one) and return when it serves")
    up.add_argument(
        "--workers", "-w", type=int, default=None, help="worker processes (default 2, or as running)"
    )
    up.add_argument(
        "--ipfs-api", default=None, help="use your own IPFS (Kubo RPC) node instead of starting js-ipfs"
    )
    up.add_argument(
        "--no-ipfs-install", action="store_true", help="fail rather than install js-ipfs (minutes)"
    )
    up.add_argument("--port", type=int, default=0, help="chain RPC port (default 8545, or a free one)")
    up.add_argument("--ipfs-port", type=int, default=0, help="IPFS API port (default 5001, or a free one)")
    up.add_argument(
        "--tools", type=Path, default=None, help="where anvil and js-ipfs are installed (DECLOUD_TOOLS)"
    )
    up.set_defaults(func=cmd_up)
    status = cmds.add_parser("status", help="nodes, workers and tasks of the running devnet")
    status.add_argument("--no-tasks", action="store_true", help="skip counting tasks on chain")
    status.set_defaults(func=cmd_status)
    down = cmds.add_parser("down", help="stop every devnet process and check that none is left")
    down.add_argument(
        "--grace", type=float, default=10.0, help="seconds workers get to finish before SIGKILL"
    )
    down.set_defaults(func=cmd_down)


class StepPrinter:
    """Progress on stderr: one line per step with its time; on a terminal the line ticks while it runs."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._lock = threading.Lock()
        self._open: str | None = None  # the text of an unfinished step line

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        started = time.monotonic()
        self._write_open(f"  {title} ...")
        stop = threading.Event()
        ticker = threading.Thread(target=self._tick, args=(title, started, stop), daemon=True)
        if self.tty:
            ticker.start()
        outcome = "failed"
        try:
            yield
            outcome = "done"
        finally:
            stop.set()
            if self.tty:
                ticker.join()
            self._close(f"  {title} ... {outcome} ({time.monotonic() - started:.1f} s)")

    def note(self, text: str) -> None:
        with self._lock:
            if self._open is not None:
                self.stream.write("\r\033[K" if self.tty else "\n")
            self.stream.write(f"    {text}\n")
            if self._open is not None and self.tty:
                self.stream.write(self._open)  # the ticking line goes back under the note
            elif not self.tty:
                self._open = None
            self.stream.flush()

    def _tick(self, title: str, started: float, stop: threading.Event) -> None:
        while not stop.wait(0.5):
            self._write_open(f"  {title} ... {time.monotonic() - started:.0f} s")

    def _write_open(self, text: str) -> None:
        with self._lock:
            self.stream.write(("\r\033[K" if self.tty and self._open else "") + text)
            self.stream.flush()
            self._open = text

    def _close(self, text: str) -> None:
        with self._lock:
            if self.tty:
                self.stream.write("\r\033[K" + text + "\n")
            elif self._open is not None:  # the step's line is still the last one: finish it
                self.stream.write(" " + text.rsplit(" ... ", 1)[1] + "\n")
            else:  # notes came in between: repeat the title
                self.stream.write(text + "\n")
            self.stream.flush()
            self._open = None


# -- up / down ---------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    from .manager import Devnet

    devnet = Devnet(tools_dir=args.tools)
    print("decloud devnet up: progress below...", file=sys.stderr)
    started = time.monotonic()
    result = devnet.up(
        args.workers, ipfs_api=args.ipfs_api, install_ipfs=not args.no_ipfs_install,
        chain_port=args.port, ipfs_port=args.ipfs_port, reporter=StepPrinter(),
    )  # fmt: skip
    if result.fresh:
        print(f"\nThe devnet is up ({time.monotonic() - started:.1f} s).")
        print(_summary(result.state))
        print(_key_hint(result.state, result.user_key))
        return 0
    print(f"\nThe devnet was running; {', '.join(result.changes)}." if result.changes
          else "\nThe devnet is already running and healthy.")  # fmt: skip
    status = devnet_status(devnet, scan_tasks=False)
    return _print_status(status) if status is not None else 1


def _summary(state: DevnetState) -> str:
    ipfs = "yours (--ipfs-api)" if state.ipfs_external else "js-ipfs"
    logs = Path(state.workers[0].log).parent if state.workers else "-"
    lines = [
        f"  chain     {state.rpc_url}   anvil, chain id {state.chain_id}",
        f"  contract  {state.contract}",
        f"  ipfs      {state.ipfs_api}   {ipfs}",
        f"  workers   {len(state.workers)}, logs in {logs}",
    ]
    return "\n".join(lines)


def _key_hint(state: DevnetState, user_key: str | None) -> str:
    path = state.requester_key_file
    lines = ["", "The notebook's account:"]
    if user_key:
        from ..units import format_amount
        from .manager import REQUESTER_GRANT

        lines.append(
            f"  your key from {user_key} was funded with {format_amount(REQUESTER_GRANT)}; decloud uses it."
        )
    else:
        lines += [
            f"  a funded devnet account ({state.requester}) has its key in {path}.",
            "  decloud reads the key from DECLOUD_PRIVATE_KEY, a .env file in the working folder, or a keystore;",
            "  so either start Jupyter from a shell where you ran",
            f"      export DECLOUD_PRIVATE_KEY=$(cat {path})",
            "  or, in the notebook's folder (keep .env out of git):",
            f"      echo DECLOUD_PRIVATE_KEY=$(cat {path}) >> .env",
        ]
    lines += [
        "",
        "In a notebook:  %load_ext decloud_magics   then   %decloud network use devnet   then   %%decloud run",
        "See it:  decloud devnet status        Stop it:  decloud devnet down",
    ]
    return "\n".join(lines)


def cmd_down(args: argparse.Namespace) -> int:
    from .manager import Devnet

    devnet = Devnet()
    if devnet.load_state() is None:
        print("No devnet is running here (nothing to stop).")
        return 0
    survivors = devnet.down(reporter=StepPrinter(), grace=args.grace)
    if survivors:
        print(f"These processes survived SIGKILL: {', '.join(map(str, survivors))}; check them with `ps -p`.")
        return 1
    print("The devnet is down: no process is left running.")
    return 0


# -- status -------------------------------------------------------------------------------


@dataclass
class WorkerStatus:
    index: int
    address: str
    pid: int | None
    alive: bool
    balance_wei: int | None = None
    owed_wei: int | None = None


@dataclass
class DevnetStatus:
    state: DevnetState
    chain_up: bool
    ipfs_up: bool
    workers: list[WorkerStatus]
    block: int | None = None
    task_count: int = 0
    tasks: dict[str, int] | None = None  # on-chain status name -> count; None when not scanned


def devnet_status(
    devnet: Devnet, scan_tasks: bool = True, progress: Callable[[int, int], None] | None = None
) -> DevnetStatus | None:
    """Nodes, workers (alive, balance, owed) and tasks by on-chain status; None when no devnet runs here."""
    from .manager import ipfs_answers

    state = devnet.load_state()
    if state is None:
        return None
    workers = [
        WorkerStatus(
            w.index, w.address, w.process.pid if w.process else None, bool(w.process and w.process.alive())
        )
        for w in state.workers
    ]
    status = DevnetStatus(state, devnet.chain_healthy(state), ipfs_answers(state.ipfs_api), workers)
    if status.chain_up:
        _read_chain(status, scan_tasks, progress)
    return status


def _read_chain(status: DevnetStatus, scan_tasks: bool, progress: Callable[[int, int], None] | None) -> None:
    from web3 import HTTPProvider, Web3

    from ..chain.market import Market

    state = status.state
    w3 = Web3(HTTPProvider(state.rpc_url, request_kwargs={"timeout": 10}))
    market = Market(w3, state.contract, state.requester or state.contract)  # reads only: no key
    for w in status.workers:
        w.balance_wei, w.owed_wei = market.balance(w.address), market.owed(w.address)
    status.block = market.block_number()
    status.task_count = int(market.contract.functions.taskCount().call())
    if not scan_tasks:
        return
    status.tasks = {}
    for task_id in range(1, status.task_count + 1):  # one view call each: ~2 ms a task on anvil
        name = market.get_task(task_id).status.name.lower()
        status.tasks[name] = status.tasks.get(name, 0) + 1
        if progress is not None and (task_id % 50 == 0 or task_id == status.task_count):
            progress(task_id, status.task_count)


def cmd_status(args: argparse.Namespace) -> int:
    from .manager import Devnet

    tty = sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if tty and total >= 100:
            bar = "#" * (20 * done // total)
            sys.stderr.write(
                f"\r  reading tasks [{bar:<20}] {done}/{total}" + ("\n" if done == total else "")
            )
            sys.stderr.flush()

    status = devnet_status(Devnet(), scan_tasks=not args.no_tasks, progress=progress)
    if status is None:
        print("No devnet is running here: start one with `decloud devnet up`.")
        return 1
    return _print_status(status)


def _print_status(status: DevnetStatus) -> int:
    """The status as text; 0 when every part is up, 1 when something is down."""
    from ..units import format_amount

    state = status.state
    up = {True: "up  ", False: "DOWN"}
    print(f"chain     {up[status.chain_up]}  {state.rpc_url}  pid {state.chain.pid}"
          + (f", block {status.block}" if status.block is not None else ""))  # fmt: skip
    ipfs_pid = "yours (--ipfs-api)" if state.ipfs_external else f"pid {state.ipfs.pid if state.ipfs else '?'}"
    print(f"ipfs      {up[status.ipfs_up]}  {state.ipfs_api}  {ipfs_pid}")
    print(f"contract  {state.contract}")
    print(f"workers   {sum(w.alive for w in status.workers)} of {len(status.workers)} running")
    for w in status.workers:
        money = ""
        if w.balance_wei is not None:
            money = f"  balance {format_amount(w.balance_wei)}, owed {format_amount(w.owed_wei)}"
        print(f"  {w.index:>2}  {'running' if w.alive else 'DEAD   '}  pid {w.pid}  {w.address}{money}")
    if status.tasks is not None:
        counts = (
            ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in sorted(status.tasks.items()))
            or "none yet"
        )
        print(f"tasks     {status.task_count}: {counts}")
    elif status.chain_up:
        print(f"tasks     {status.task_count}")
    if not (status.chain_up and status.ipfs_up and all(w.alive for w in status.workers)):
        print("Something is down: `decloud devnet up` restarts it (a dead chain means a fresh devnet).")
        return 1
    return 0
