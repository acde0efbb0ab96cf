"""Round trip of a trivial cell, with its baselines measured in the same run.

    python benchmarks/roundtrip.py [--network local|devnet] [--runs 30] [--devnet-workers 2]

Times ``%%decloud run`` (cell submitted -> value back in the namespace)
through a real InteractiveShell, and in the same rounds, taking turns: a bare
``subprocess.run([python, "-c", "pass"])`` (the floor: every sandbox starts a
process), dask's ``submit().result()`` on a 2-process LocalCluster and
ipyparallel's ``apply_sync`` on 2 engines (both from the ``bench`` extra:
``pip install -e .[bench]``; skipped with a message when absent). Prints the
medians, decloud's ratio to each, where decloud's time goes (median per
stage), and the gas of one task's lifecycle.

``--network devnet`` uses the devnet already running in DECLOUD_HOME when
there is one; otherwise it brings one up (anvil, js-ipfs, ``--devnet-workers``
workers, tools from ``.tools``) in a temporary DECLOUD_HOME and tears it down
at the end (a devnet found running is used as it is, and its ledger gets the
runs). ``local`` always runs in a temporary DECLOUD_HOME unless one is set.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import _common
from _common import in_turns, machine, median_ms, quantile_ms, verdict

#: Targets from the performance issue: decloud's round trip over dask's.
TARGET_VS_DASK = {"local": 10.0, "devnet": 3.0}


class DecloudCells:
    """``%%decloud run`` of a trivial cell in a real InteractiveShell, one call per cell."""

    def __init__(self, network: str) -> None:
        from IPython.core.interactiveshell import InteractiveShell
        from IPython.utils.capture import capture_output

        self.network = network
        self.shell = InteractiveShell.instance()
        self._capture = capture_output
        with capture_output():
            self.shell.run_line_magic("load_ext", "decloud_magics")
            self.shell.run_line_magic("decloud", f"network use {network}")
        self.magics = next(m for m in self.shell.configurables if type(m).__name__ == "DecloudMagics")
        self._counter = iter(range(10**9))
        self.spans: list[tuple[float, float, Any]] = []  # (wall start, wall end, run) of each cell

    def one(self) -> None:
        i = next(self._counter)
        began = time.time()
        with self._capture():
            result = self.shell.run_cell(f"%%decloud run\nvalue = {i} + 1")
        ended = time.time()
        result.raise_error()
        assert self.shell.user_ns["value"] == i + 1, self.shell.user_ns.get("value")
        self.spans.append((began, ended, list(self.magics._runs.values())[-1]))

    def stages(self, last: int) -> dict[str, float]:
        """Median ms of each stage over the ``last`` cells, from the run's own event times."""
        parts: dict[str, list[float]] = {
            "cell start -> task created (package, store, create tx)": [],
            "created -> order placed (a worker takes it; no claim tx)": [],
            "order placed -> completed (fetch, sandbox, store, submit tx)": [],
            "completed -> cell returns (fetch result, bind values)": [],
        }
        for began, ended, run in self.spans[-last:]:
            at = {e.kind.value: e.at.timestamp() for e in run.events}
            if not {"created", "order_placed", "completed"} <= at.keys():
                continue
            for label, seconds in zip(
                parts,
                (
                    at["created"] - began,
                    at["order_placed"] - at["created"],
                    at["completed"] - at["order_placed"],
                    ended - at["completed"],
                ),
            ):
                parts[label].append(seconds * 1000)
        return {label: statistics.median(v) for label, v in parts.items() if v}

    def sandbox_wall_ms(self, last: int) -> float | None:
        """Median ms of the sandbox process (start to exit) as the workers timed it."""
        walls = [run.result(timeout=0).timings.get("wall") for _, _, run in self.spans[-last:]]
        walls = [w for w in walls if w is not None]
        return statistics.median(walls) * 1000 if walls else None

    def close(self) -> None:
        """Stop the clients' watchers (before a devnet started here goes down under them)."""
        for client in list(self.magics._clients.values()):
            client.close()

    def lifecycle_gas(self) -> dict[str, int]:
        """Gas of the last run's transactions (create and submit; a claim too if one was made)."""
        run = self.spans[-1][2]
        market = self.magics.client(self.network).conn.market
        gas: dict[str, int] = {}
        for event in run.events:
            if event.tx_hash and event.kind.value in ("created", "order_placed", "completed"):
                with market.lock:
                    gas[event.kind.value] = int(
                        market.w3.eth.get_transaction_receipt(event.tx_hash)["gasUsed"]
                    )
        gas["lifecycle"] = sum(gas.values())
        return gas


@contextlib.contextmanager
def ipyparallel_view(engines: int = 2) -> Any:
    try:
        import ipyparallel as ipp
    except ImportError:
        yield None
        return
    with ipp.Cluster(n=engines, log_level=40) as rc:
        yield rc[:1]


def trivial(x: float) -> float:
    return x + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="local", choices=["local", "devnet"])
    parser.add_argument("--runs", type=int, default=30, help="rounds measured (each system once per round)")
    parser.add_argument("--warmup", type=int, default=3, help="rounds run first and not counted")
    parser.add_argument("--devnet-workers", type=int, default=2, help="workers of a devnet started here")
    args = parser.parse_args()

    if args.network == "local":
        os.environ.setdefault("DECLOUD_HOME", tempfile.mkdtemp(prefix="decloud-bench-"))
    print(f"machine: {machine()}")

    with contextlib.ExitStack() as stack:
        if args.network == "devnet":
            stack.enter_context(_common.devnet(args.devnet_workers))
        began = time.perf_counter()
        cells = DecloudCells(args.network)
        stack.callback(cells.close)
        cells.one()  # the first cell connects (and on local starts the embedded chain and workers)
        print(f"first %%decloud run on {args.network} (connects): {time.perf_counter() - began:.2f} s")

        actions: dict[str, Callable[[], object]] = {
            f"decloud %%decloud run ({args.network})": cells.one,
            "bare subprocess.run(python -c pass)": lambda: subprocess.run(
                [sys.executable, "-c", "pass"], check=True
            ),
        }
        dask = stack.enter_context(_common.dask_client(2))
        if dask is None:
            print("dask.distributed not installed (pip install -e .[bench]): its baseline is skipped")
        else:
            actions["dask submit().result(), 2 processes"] = lambda: dask.submit(
                trivial, time.perf_counter()
            ).result()
        view = stack.enter_context(ipyparallel_view(2))
        if view is None:
            print("ipyparallel not installed (pip install -e .[bench]): its baseline is skipped")
        else:
            actions["ipyparallel apply_sync, 2 engines"] = lambda: view.apply_sync(trivial, 1.0)

        samples = in_turns(actions, args.runs, warmup=args.warmup)
        stages = cells.stages(args.runs)
        sandbox_ms = cells.sandbox_wall_ms(args.runs)
        gas = cells.lifecycle_gas()

    medians = {label: median_ms(s) for label, s in samples.items()}
    ours_label = next(iter(medians))
    ours = medians[ours_label]
    print(f"\nround trip of a trivial cell; median of {args.runs} rounds, systems taking turns "
          f"(after {args.warmup} warm-up rounds)")  # fmt: skip
    print(f"  {'system':<42}{'median ms':>10}{'p90 ms':>9}{'decloud / it':>14}")
    for label, ms in medians.items():
        p90 = quantile_ms(samples[label], 0.9)
        print(f"  {label:<42}{ms:>10.1f}{p90:>9.1f}{ours / ms:>13.1f}x")
    dask_label = "dask submit().result(), 2 processes"
    if dask_label in medians:
        ratio = ours / medians[dask_label]
        target = TARGET_VS_DASK[args.network]
        print(
            f"target: {args.network} round trip <= {target:g}x dask -> {ratio:.1f}x, {verdict(ratio <= target)}"
        )
    print("where decloud's time goes (median per stage, from the run's events):")
    for label, ms in stages.items():
        print(f"  {label:<58}{ms:8.1f} ms")
    if sandbox_ms is not None:
        print(f"  (of which the sandbox process, start to exit, as the worker timed it: {sandbox_ms:.1f} ms)")
    print("gas of the last task's lifecycle: " + ", ".join(f"{k} {v:,}" for k, v in gas.items()))
    sys.stdout.flush()
    os._exit(0)  # the embedded workers are daemon threads; skip their orderly shutdown


if __name__ == "__main__":
    main()
