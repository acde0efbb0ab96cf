"""Round trip of a trivial cell, with its baselines measured in the same run.

    python benchmarks/roundtrip.py [--network local|devnet] [--runs 30]

Prints the median wall time of ``%%decloud run`` (submit -> value in the
namespace) through a real InteractiveShell, the median of a bare
``subprocess.run([python, "-c", "pass"])`` (the floor: any sandbox starts a
process), dask's ``submit().result()`` and ipyparallel's ``apply_sync`` when
installed (``pip install -e .[bench]``), the ratios, the gas of one task's
whole lifecycle, and the import time of the package.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

os.environ.setdefault("DECLOUD_HOME", tempfile.mkdtemp(prefix="decloud-bench-"))


def median_ms(fn: Callable[[], object], runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def decloud_magic(network: str, runs: int) -> tuple[float, dict[str, int]]:
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "decloud_magics")
    shell.run_line_magic("decloud", f"network use {network}")
    counter = iter(range(10**9))

    def one() -> None:
        i = next(counter)
        with capture_output():
            result = shell.run_cell(f"%%decloud run\nvalue = {i} + 1")
        result.raise_error()
        assert shell.user_ns["value"] == i + 1

    ms = median_ms(one, runs)
    magics = next(m for m in shell.configurables if type(m).__name__ == "DecloudMagics")
    run = list(magics._runs.values())[-1]
    return ms, lifecycle_gas(magics.client(network), run)


def lifecycle_gas(client: object, run: object) -> dict[str, int]:
    """Gas of create + claim + submit, read from the receipts of the run's transactions."""
    w3 = client.conn.market.w3  # type: ignore[attr-defined]
    gas: dict[str, int] = {}
    for event in run.events:  # type: ignore[attr-defined]
        if event.tx_hash and event.kind.value in ("created", "order_placed", "completed"):
            with client.conn.market.lock:  # type: ignore[attr-defined]
                gas[event.kind.value] = int(w3.eth.get_transaction_receipt(event.tx_hash)["gasUsed"])
    gas["lifecycle"] = sum(gas.values())
    return gas


def bare_subprocess(runs: int) -> float:
    return median_ms(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), runs)


def dask_submit(runs: int) -> float | None:
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        return None
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            return median_ms(lambda: client.submit(lambda x: x + 1, time.perf_counter()).result(), runs, warmup=5)


def ipyparallel_apply(runs: int) -> float | None:
    try:
        import ipyparallel as ipp
    except ImportError:
        return None
    with ipp.Cluster(n=2, log_level=40) as rc:
        view = rc[:1]
        return median_ms(lambda: view.apply_sync(lambda: 1), runs, warmup=5)


def import_time(runs: int = 10) -> tuple[float, float]:
    bare = median_ms(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), runs)
    ours = median_ms(lambda: subprocess.run([sys.executable, "-c", "import decloud_magics"], check=True), runs)
    return ours, bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="local")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()

    ours, gas = decloud_magic(args.network, args.runs)
    floor = bare_subprocess(args.runs)
    print(f"decloud %%decloud run on {args.network}: median {ours:8.1f} ms over {args.runs} runs")
    print(f"bare subprocess.run(python -c pass):      median {floor:8.1f} ms   ratio {ours / floor:6.1f}x")
    dask_ms = dask_submit(args.runs)
    if dask_ms is None:
        print("dask.distributed not installed (pip install -e .[bench]): skipped")
    else:
        print(f"dask submit().result(), 2-process cluster: median {dask_ms:8.1f} ms   ratio {ours / dask_ms:6.1f}x")
    ipp_ms = ipyparallel_apply(args.runs)
    if ipp_ms is None:
        print("ipyparallel not installed (pip install -e .[bench]): skipped")
    else:
        print(f"ipyparallel apply_sync:                    median {ipp_ms:8.1f} ms   ratio {ours / ipp_ms:6.1f}x")
    print("gas of one task's lifecycle: " + ", ".join(f"{k} {v:,}" for k, v in gas.items()))
    imp, bare = import_time()
    print(f"python -c 'import decloud_magics': {imp:.1f} ms vs python -c pass {bare:.1f} ms (ratio {imp / bare:.2f}x)")
    os._exit(0)  # the embedded workers are daemon threads; skip their orderly shutdown


if __name__ == "__main__":
    main()
