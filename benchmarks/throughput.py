"""Tasks per second on the devnet with many trivial tasks in flight, against dask's ``client.map``.

    python benchmarks/throughput.py [--tasks 1000] [--workers 4] [--batch 100]

The requester is a ``Client`` on the devnet: one ``client.map`` packages and
stores every task and opens them ``--batch`` per ``createTasks`` transaction.
The rate is tasks / (``map`` called -> last ``TaskCompleted`` observed on
chain), packaging included; the time until every run's values are back in
Python is printed too. The devnet's workers do the rest as in
normal use: they split the tasks by share (no claims; a worker takes another's
task, with a claim, only when it has nothing of its own), fetch, run the
sandbox, store, and settle the results that queue up in one transaction.

Baseline, same run, same machine: ``client.map`` of as many trivial
functions on a dask LocalCluster of 2 single-threaded processes, then
``gather``; the median of ``--dask-repeat`` maps, half measured before the
decloud run and half after (the devnet is up, idle, for all of them).

A running devnet in DECLOUD_HOME with at least ``--workers`` workers is used
as it is; otherwise one is started in a temporary DECLOUD_HOME and torn down.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time
from typing import Any

import _common
from _common import machine, verdict

PRICE_WEI = 10**14  # 0.0001 ether, the notebook's default price
TIMEOUT_S = 60


def dask_map(client: Any, n: int) -> float:
    """Seconds for ``client.map`` of ``n`` trivial calls and the gather of their results."""
    began = time.perf_counter()
    futures = client.map(_inc, range(n), pure=False)
    results = client.gather(futures)
    spent = time.perf_counter() - began
    assert results[-1] == n
    del futures
    return spent


def _inc(x: int) -> int:
    return x + 1


def cpu_seconds(pid: int, children: bool = True) -> float | None:
    """CPU time of a process (and of its children it has reaped), from /proc; None where there is none."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU time of a process and of all its descendants, live or reaped.

    A worker's sandbox processes are forked by its zygote, a live child that
    reaps them: their time is in the zygote's, which is not yet the worker's.
    """
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parents[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        tree += frontier
    seconds = [cpu_seconds(p) for p in tree]
    return None if seconds[0] is None else sum(s for s in seconds if s is not None)


def devnet_processes(handle: _common.DevnetHandle) -> dict[str, int]:
    """Pids of the devnet's parts (each worker counted with its zygote and sandboxes)."""
    state = handle.devnet.load_state()
    pids = {"anvil (chain)": state.chain.pid}
    if state.ipfs is not None:
        pids["js-ipfs (store)"] = state.ipfs.pid
    for w in state.workers:
        if w.process is not None:
            pids[f"worker-{w.index} + its sandboxes"] = w.process.pid
    return pids


def decloud_batch(handle: _common.DevnetHandle, n: int, batch: int, patience: float) -> dict[str, Any]:
    """``Client.map`` of ``n`` trivial runs on the devnet, followed to the last completion on chain."""
    from decloud_magics.client import Client
    from decloud_magics.networks import get_network
    from decloud_magics.package import decode_result, decode_values, result_digest

    client = Client(get_network("devnet"), key=handle.key)
    market, store = client.conn.market, client.conn.store
    follower = market.follow(from_block=market.block_number())
    pids = devnet_processes(handle)
    cpu_before = {name: tree_cpu_seconds(pid) for name, pid in pids.items()}
    cpu_before["this process (requester)"] = cpu_seconds(os.getpid(), children=False)

    first_create = time.perf_counter()
    runs = client.map("value = i + 1", [{"i": i} for i in range(n)], outputs=["value"],
                      price=PRICE_WEI, timeout=TIMEOUT_S, batch=batch)  # fmt: skip
    all_created = time.perf_counter()
    ids = [run.task_id for run in runs if run.task_id is not None]
    created_at = {  # when each task's CREATED was seen, on the clock of first_create
        run.task_id: run.submitted_monotonic - time.monotonic() + time.perf_counter()
        + next(e for e in run.events if e.kind.value == "created").data["elapsed_s"]
        for run in runs if run.task_id is not None
    }  # fmt: skip
    gas = sum(run.gas_used for run in runs)
    print(f"packaged, stored and opened {n} tasks ({len(range(0, n, batch))} createTasks) in "
          f"{all_created - first_create:.2f} s ({gas / n:,.0f} gas per task to create)", flush=True)  # fmt: skip

    wanted = set(ids)
    ended: dict[int, tuple[str, float]] = {}
    claims: collections.Counter[int] = collections.Counter()
    workers: collections.Counter[str] = collections.Counter()
    results: dict[int, tuple[str, bytes]] = {}
    give_up = time.monotonic() + patience
    next_note = time.monotonic() + 10
    while len(ended) < n and time.monotonic() < give_up:
        now = time.perf_counter()
        for event in follower.poll():
            task_id = event.task_id
            if task_id not in wanted:
                continue
            if event.name == "TaskClaimed":
                claims[task_id] += 1
            elif event.name == "ResultSubmitted":
                workers[str(event.args["worker"])] += 1  # most tasks are served without a claim
                results[task_id] = (
                    bytes(event.args["resultCid"]).decode(),
                    bytes(event.args["resultDigest"]),
                )
            elif event.name in (
                "TaskCompleted",
                "TaskFailed",
                "TaskDisputed",
                "TaskNotProcessed",
                "TaskCancelled",
            ):
                ended.setdefault(task_id, (event.name, now))
        if time.monotonic() > next_note:
            print(f"  {len(ended)}/{n} ended after {time.perf_counter() - first_create:.0f} s", flush=True)
            next_note += 10
        time.sleep(0.02)
    follower.close()
    cpu_after = {name: tree_cpu_seconds(pid) for name, pid in pids.items()}
    cpu_after["this process (requester)"] = cpu_seconds(os.getpid(), children=False)
    cpu = {
        name: cpu_after[name] - before  # type: ignore[operator]
        for name, before in cpu_before.items()
        if before is not None and cpu_after.get(name) is not None
    }

    outcomes = collections.Counter(name for name, _ in ended.values())
    last = max((t for _, t in ended.values()), default=time.perf_counter())
    elapsed = last - first_create
    latencies = [t - created_at[i] for i, (_, t) in ended.items()]

    # Outside the clock: a few results fetched, checked against the chain's digest, decoded.
    checked = 0
    for task_id in sorted(results)[:: max(1, len(results) // 10)]:
        cid, digest = results[task_id]
        data = store.get(cid)
        assert result_digest(data) == digest, f"task {task_id}: digest mismatch"
        values = decode_values(decode_result(data), trust_pickle=False)
        assert values == {"value": ids.index(task_id) + 1}, (task_id, values)
        checked += 1
    # what the user waits for: every run's values back in Python, through the client
    returned = [run.result(timeout=patience).values["value"] for run in runs]
    assert returned == list(range(1, n + 1))
    in_python = time.perf_counter() - first_create
    client.close()
    return {
        "elapsed": elapsed,
        "ended": len(ended),
        "outcomes": dict(outcomes),
        "rate": len(ended) / elapsed if elapsed > 0 else 0.0,
        "latency_p50": statistics.median(latencies) if latencies else float("nan"),
        "latency_max": max(latencies) if latencies else float("nan"),
        "reclaimed": sum(1 for c in claims.values() if c > 1),
        "per_worker": dict(workers),
        "checked": checked,
        "in_python": in_python,
        "create_gas_per_task": gas / n,
        "cpu": cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4, help="devnet workers (one sandbox slot each)")
    parser.add_argument("--batch", type=int, default=100, help="tasks per createTasks transaction")
    parser.add_argument(
        "--dask-repeat", type=int, default=6, help="dask maps measured (half before, half after)"
    )
    parser.add_argument("--patience", type=float, default=1800, help="seconds to wait for the last task")
    args = parser.parse_args()
    print(f"machine: {machine()}")

    with _common.devnet(args.workers) as handle, _common.dask_client(2) as dask:
        if dask is None:
            print("dask.distributed not installed (pip install -e .[bench]): its baseline is skipped")
        dask_times: list[float] = []
        if dask is not None:
            dask_map(dask, args.tasks)  # warm-up: workers import, connections open
            dask_times += [dask_map(dask, args.tasks) for _ in range(args.dask_repeat // 2)]
        ours = decloud_batch(handle, args.tasks, args.batch, args.patience)
        if dask is not None:
            dask_times += [
                dask_map(dask, args.tasks) for _ in range(args.dask_repeat - args.dask_repeat // 2)
            ]

    print(f"\n{args.tasks} trivial tasks in flight at once")
    print(f"decloud devnet, {handle.workers} workers: {ours['ended']} ended in {ours['elapsed']:.1f} s "
          f"-> {ours['rate']:.2f} tasks/s  (outcomes {ours['outcomes']})")  # fmt: skip
    print(f"  per task, created -> ended: median {ours['latency_p50']:.1f} s, longest {ours['latency_max']:.1f} s; "
          f"tasks claimed twice: {ours['reclaimed']}; tasks per worker: {sorted(ours['per_worker'].values())}; "
          f"results verified: {ours['checked']}; all values back in Python after {ours['in_python']:.1f} s")  # fmt: skip
    if ours["cpu"]:
        total = sum(ours["cpu"].values())
        print(f"  CPU seconds spent from first create to last completion: {total:.1f} "
              f"({total / max(ours['ended'], 1) * 1000:.0f} ms per task; the machine has {os.cpu_count()} cores "
              f"= {ours['elapsed'] * (os.cpu_count() or 1):.0f} core-seconds)")  # fmt: skip
        for name, seconds in sorted(ours["cpu"].items(), key=lambda kv: -kv[1]):
            print(f"    {name:<34}{seconds:8.1f} s  {seconds / max(ours['ended'], 1) * 1000:6.0f} ms/task")
    if dask_times:
        dask_s = statistics.median(dask_times)
        dask_rate = args.tasks / dask_s
        half = args.dask_repeat // 2
        print(f"dask maps, seconds: before {[round(t, 2) for t in dask_times[:half]]}, "
              f"after {[round(t, 2) for t in dask_times[half:]]}")  # fmt: skip
        print(f"dask client.map + gather, 2 processes: median {dask_s * 1000:.0f} ms of {len(dask_times)} maps "
              f"-> {dask_rate:,.0f} tasks/s")  # fmt: skip
        ratio = ours["rate"] / dask_rate
        print(
            f"ratio decloud / dask: {ratio:.4f}x (dask is {1 / ratio:,.0f}x faster)" if ratio else "ratio: 0"
        )
        print(f"target: throughput >= dask map -> {verdict(ratio >= 1)}")
    if ours["ended"] < args.tasks:
        print(f"WARNING: only {ours['ended']} of {args.tasks} tasks ended within {args.patience:g} s")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
