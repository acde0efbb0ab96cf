"""How long ``Ledger.history_frame()`` takes over 100,000 runs.

The side panel and ``history()`` open the whole history, so this is the
number that decides whether they feel instant. As a baseline, the same run
times the bare minimum any view must pay: one SELECT fetched into a
``pd.DataFrame`` with no typing at all.

    python benchmarks/history.py [--runs 100000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from decloud_magics.ledger import Ledger, RunRecord
from decloud_magics.models import Status

HISTORY_SQL = (
    "SELECT run_id, name, network, status, submitted_at, started_at, completed_at, price_wei, gas_used,"
    " gas_cost_wei, worker, input_cid, result_cid, error, cell_hash FROM runs ORDER BY submitted_at DESC, rowid DESC"
)


def fake_runs(count: int, seed: int = 7) -> Iterator[RunRecord]:
    """Runs shaped like real ones: a few prices, varied gas, most completed."""
    rng = random.Random(seed)
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    statuses = [Status.COMPLETED] * 8 + [Status.FAILED, Status.NOT_PROCESSED, Status.RUNNING]
    for i in range(count):
        submitted = start + timedelta(seconds=i * 30 + rng.random())
        status = rng.choice(statuses)
        done = status.is_final
        gas = rng.randrange(90_000, 250_000)
        yield RunRecord(
            run_id=f"{rng.getrandbits(128):032x}",
            name=f"cell {i % 50}",
            network=rng.choice(["local", "devnet"]),
            task_id=i,
            status=status,
            submitted_at=submitted,
            started_at=submitted + timedelta(seconds=2.5) if done else None,
            completed_at=submitted + timedelta(seconds=rng.uniform(3, 60)) if done else None,
            price_wei=rng.choice([10**15, 2 * 10**15, 5 * 10**15, 10**16]),
            gas_used=gas,
            gas_cost_wei=gas * rng.randrange(1, 50) * 10**9,
            worker=f"0x{rng.getrandbits(160):040x}",
            input_cid=f"bafy{rng.getrandbits(200):050x}",
            result_cid=f"bafy{rng.getrandbits(200):050x}" if status is Status.COMPLETED else None,
            error="ZeroDivisionError: division by zero" if status is Status.FAILED else None,
            cell_hash=f"{rng.getrandbits(256):064x}",
            code="df.groupby('k').sum()",
        )


def median_seconds(action: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``action()``, not counting freeing its result.

    The result is dropped only after the clock stops: freeing 100,000 rows
    of Python objects takes tens of milliseconds that the caller pays later,
    whenever it lets the frame go, not while waiting for it.
    """
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        result = action()
        times.append(time.perf_counter() - began)
        del result
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder, Ledger(Path(folder) / "ledger.sqlite") as ledger:
        began = time.perf_counter()
        ledger.record_runs(fake_runs(args.runs))
        print(f"filled {args.runs:,} runs in {time.perf_counter() - began:.2f} s")

        frame = ledger.history_frame()  # warm up: imports, page cache
        assert len(frame) == args.runs

        conn = ledger._conn()  # the same connection the frame reads through
        history = median_seconds(ledger.history_frame, args.repeat)
        same_columns = median_seconds(lambda: pd.DataFrame(conn.execute(HISTORY_SQL).fetchall()), args.repeat)
        whole_table = median_seconds(
            lambda: pd.DataFrame(conn.execute("SELECT * FROM runs").fetchall()), args.repeat
        )

    print(
        f"history_frame()                                   median of {args.repeat}: {history * 1000:7.1f} ms"
    )
    print(
        f"baseline pd.DataFrame(fetchall()), same columns   median of {args.repeat}: {same_columns * 1000:7.1f} ms"
    )
    print(
        f"baseline pd.DataFrame(fetchall()), SELECT *       median of {args.repeat}: {whole_table * 1000:7.1f} ms"
    )
    print(f"ratio history_frame / same-columns baseline: {history / same_columns:.2f}")
    print(f"ratio history_frame / SELECT * baseline:     {history / whole_table:.2f}")


if __name__ == "__main__":
    main()
