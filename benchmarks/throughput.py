"""Tasks per second on the devnet with many trivial tasks in flight, against dask's ``client.map``.

    python benchmarks/throughput.py [--tasks 1000] [--workers 4] [--batch 100]

The client has no batch API, so the benchmark opens the tasks itself the way
a batch submit would: every task is packaged and stored first (timed, not
part of the rate), then ``Market.create_tasks`` opens them ``--batch`` per
transaction, back to back. The rate is tasks / (first create sent -> last
``TaskCompleted`` observed on chain). The devnet's workers do the rest as in
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


def devnet_processes(handle: _common.DevnetHandle) -> dict[str, int]:
    """Pids of the devnet's parts (the workers' sandboxes count in their worker once reaped)."""
    state = handle.devnet.load_state()
    pids = {"anvil (chain)": state.chain.pid}
    if state.ipfs is not None:
        pids["js-ipfs (store)"] = state.ipfs.pid
    for w in state.workers:
        if w.process is not None:
            pids[f"worker-{w.index} + its sandboxes"] = w.process.pid
    return pids


def decloud_batch(handle: _common.DevnetHandle, n: int, batch: int, patience: float) -> dict[str, Any]:
    """Open ``n`` trivial tasks at once on the devnet and follow them to the last completion."""
    from decloud_magics.connection import connect_rpc
    from decloud_magics.networks import get_network
    from decloud_magics.package import build_task_package, decode_result, decode_values, result_digest

    conn = connect_rpc(get_network("devnet"), handle.key)
    market, store = conn.market, conn.store

    began = time.perf_counter()
    cids = []
    for i in range(n):
        _pkg, data = build_task_package(f"value = {i} + 1", {}, outputs=["value"], name=f"bench {i}")
        cids.append(store.put(data))
    packaged = time.perf_counter() - began
    print(
        f"packaged and stored {n} tasks in {packaged:.2f} s ({n / packaged:.0f}/s; not part of the rate)",
        flush=True,
    )

    follower = market.follow(from_block=market.block_number())
    deadline = market.chain_time() + 3600
    pids = devnet_processes(handle)
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    cpu_before["this process (requester)"] = cpu_seconds(os.getpid(), children=False)
    ids: list[int] = []
    created_at: dict[int, float] = {}  # when the transaction that opened the task was mined
    gas = 0
    first_create = time.perf_counter()
    for start in range(0, n, batch):
        task_ids, outcome = market.create_tasks(
            cids[start : start + batch], PRICE_WEI, timeout=TIMEOUT_S, lease=TIMEOUT_S + 15, deadline=deadline
        )
        mined = time.perf_counter()
        created_at.update((task_id, mined) for task_id in task_ids)
        ids += task_ids
        gas += outcome.gas_used
    all_created = time.perf_counter()
    print(f"opened {n} tasks in {len(range(0, n, batch))} transactions in {all_created - first_create:.2f} s "
          f"({gas / n:,.0f} gas per task to create)", flush=True)  # fmt: skip

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
    cpu_after = {name: cpu_seconds(pid) for name, pid in pids.items()}
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
    store.close()
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
          f"results verified: {ours['checked']}")  # fmt: skip
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
