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
import sqlite3
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

# The rows history_frame() shows, in its order, read the plain way.
HISTORY_SQL = (
    "SELECT run_id, name, network, status, submitted_at, started_at, completed_at, price_wei, gas_used,"
    " gas_cost_wei, worker, input_cid, result_cid, error, cell_hash"
    " FROM runs ORDER BY submitted_at DESC, rowid DESC"
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


def median_seconds(actions: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median wall time of each action, taking turns round by round.

    Turns, so that a burst of load from elsewhere on the machine hits every
    action alike and the ratios stay fair. A result is dropped only after
    the clock stops: freeing 100,000 rows of Python objects takes tens of
    milliseconds that the caller pays whenever it lets the frame go, not
    while waiting for it.
    """
    times: dict[str, list[float]] = {label: [] for label in actions}
    for _ in range(repeat):
        for label, action in actions.items():
            began = time.perf_counter()
            result = action()
            times[label].append(time.perf_counter() - began)
            del result
    return {label: statistics.median(spent) for label, spent in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder, Ledger(Path(folder) / "ledger.sqlite") as ledger:
        began = time.perf_counter()
        ledger.record_runs(fake_runs(args.runs))
        print(f"filled {args.runs:,} runs in {time.perf_counter() - began:.2f} s")
        assert len(ledger.history_frame()) == args.runs  # also warms imports and the page cache

        conn = sqlite3.connect(ledger.path)  # a plain connection for the baselines
        medians = median_seconds(
            {
                "history_frame()": ledger.history_frame,
                "baseline pd.DataFrame(fetchall()), same columns": lambda: pd.DataFrame(
                    conn.execute(HISTORY_SQL).fetchall()
                ),
                "baseline pd.DataFrame(fetchall()), SELECT *": lambda: pd.DataFrame(
                    conn.execute("SELECT * FROM runs").fetchall()
                ),
            },
            args.repeat,
        )
        conn.close()

    for label, seconds in medians.items():
        print(f"{label:50} median of {args.repeat}: {seconds * 1000:7.1f} ms")
    history, same_columns, whole_table = medians.values()
    print(f"ratio history_frame / same-columns baseline: {history / same_columns:.2f}")
    print(f"ratio history_frame / SELECT * baseline:     {history / whole_table:.2f}")


if __name__ == "__main__":
    main()
