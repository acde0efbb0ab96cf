"""Gas of a task's lifecycle, one task and amortized over a batch.

    python benchmarks/gas.py [--batch 100] [--tasks 5]

TaskMarket (the committed artifact) is deployed on the in-process EVM
(web3's EthereumTesterProvider, py-evm, cancun rules); one requester opens
tasks and one worker submits their results, with a paid push to the worker as
in normal use. A single-validator task needs no claim, so its lifecycle is
``createTask`` + ``submitResult``; a batch is one ``createTasks`` and one
``submitResults`` of ``--batch`` tasks. The same with a claim per task (what a
worker that wants an exclusive lease pays) is shown too.

Baseline, same run, same chain: the same lifecycle written the obvious way,
``benchmarks/contracts/NaiveMarket.sol`` (the whole task in one storage
struct with string CIDs, the price pushed to the worker), compiled at run
time with the solc of ``scripts/node_modules`` and TaskMarket's compiler
settings. Without node or solc the baseline is skipped with a message.

Gas is deterministic, so the single-task figure is the median of ``--tasks``
identical lifecycles after a first one on the fresh contract (which pays for
first-time storage writes and is shown apart). CIDs are real 59-character
CIDv1 strings, distinct per task.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
from typing import Any

from _common import ROOT, machine, verdict

BUILD_NAIVE = ROOT / "benchmarks" / "contracts" / "build_naive.js"
PRICE = 10**14
DIGEST = hashlib.sha256(b"result").digest()
BASE_TX_GAS = 21_000
TARGET_SINGLE = 100_000
TARGET_BATCH = 50_000


def fmt(gas: float) -> str:
    return f"{gas:,.0f}"


def cid(label: str) -> str:
    from decloud_magics.store.cid import cid_for

    return cid_for(label.encode())


class Chain:
    """A fresh in-process EVM with a requester and a worker account."""

    def __init__(self) -> None:
        from web3 import EthereumTesterProvider, Web3

        self.w3 = Web3(EthereumTesterProvider())
        self.requester, self.worker = self.w3.eth.accounts[:2]

    def deploy(self, abi: list[Any], bytecode: str) -> Any:
        factory = self.w3.eth.contract(abi=abi, bytecode=bytecode)
        receipt = self.w3.eth.get_transaction_receipt(
            factory.constructor().transact({"from": self.requester})
        )
        return self.w3.eth.contract(address=receipt["contractAddress"], abi=abi)

    def gas(self, fn: Any, sender: str, value: int = 0, limit: int = 1_000_000) -> tuple[int, Any]:
        # A fixed limit skips the node's estimate (a second run of each call); gas used does not depend on it.
        tx = fn.transact({"from": sender, "value": value, "gas": limit})
        receipt = self.w3.eth.get_transaction_receipt(tx)
        assert receipt["status"] == 1, "transaction reverted"
        return int(receipt["gasUsed"]), receipt

    def deadline(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"]) + 3600


class Lifecycle:
    """One contract's way of doing create / create many / claim / submit."""

    def __init__(self, name: str, chain: Chain, contract: Any, kind: str) -> None:
        self.name, self.chain, self.c, self.kind = name, chain, contract, kind
        self.serial = 0

    def _cid(self) -> str:
        self.serial += 1
        return cid(f"{self.name} input {self.serial}")

    def create(self) -> tuple[int, int]:
        f, ch = self.c.functions, self.chain
        if self.kind == "ours":
            fn = f.createTask(self._cid().encode(), 60, 75, ch.deadline(), 1, 1, 1024)
        else:
            fn = f.createTask(self._cid(), ch.deadline())
        gas, receipt = ch.gas(fn, ch.requester, PRICE)
        return gas, self._ids(receipt)[0]

    def create_many(self, n: int) -> tuple[int, list[int]]:
        f, ch = self.c.functions, self.chain
        cids = [self._cid() for _ in range(n)]
        if self.kind == "ours":
            fn = f.createTasks([c.encode() for c in cids], 60, 75, ch.deadline(), 1, 1, 1024)
        else:
            fn = f.createTasks(cids, ch.deadline())
        gas, receipt = ch.gas(fn, ch.requester, PRICE * n, limit=29_000_000)
        ids = self._ids(receipt)
        assert len(ids) == n
        return gas, ids

    def claim(self, task_id: int) -> int:
        return self.chain.gas(self.c.functions.claim(task_id), self.chain.worker)[0]

    def submit_many(self, ids: list[int]) -> int:
        results = [cid(f"{self.name} result {i}").encode() for i in ids]
        fn = self.c.functions.submitResults(ids, [DIGEST] * len(ids), results)
        return self.chain.gas(fn, self.chain.worker, limit=29_000_000)[0]

    def submit(self, task_id: int) -> int:
        result = cid(f"{self.name} result {task_id}")
        if self.kind == "ours":
            fn = self.c.functions.submitResult(task_id, DIGEST, result.encode())
        else:
            fn = self.c.functions.submitResult(task_id, result)
        return self.chain.gas(fn, self.chain.worker)[0]

    def _ids(self, receipt: Any) -> list[int]:
        from web3.logs import DISCARD

        events = self.c.events.TaskCreated().process_receipt(receipt, errors=DISCARD)
        return [int(e["args"]["taskId"]) for e in events]

    def single(self, claim: bool = True) -> dict[str, int]:
        created, task_id = self.create()
        claimed = self.claim(task_id) if claim else 0
        submitted = self.submit(task_id)
        return {
            "create": created,
            "claim": claimed,
            "submit": submitted,
            "total": created + claimed + submitted,
        }

    def batch(self, n: int, claim: bool = True) -> dict[str, float]:
        created, ids = self.create_many(n)
        claims = [self.claim(i) for i in ids] if claim else [0]
        submits = [self.submit(i) for i in ids] if claim else [self.submit_many(ids)]
        total = created + sum(claims) + sum(submits)
        return {
            "create": created / n,
            "claim": sum(claims) / n,
            "submit": sum(submits) / n,
            "total": total / n,
        }


def compile_naive() -> dict[str, Any] | None:
    """ABI and bytecode of NaiveMarket, or None (with the reason printed) when node or solc is missing."""
    if shutil.which("node") is None:
        print("BASELINE SKIPPED: node is not on PATH (NaiveMarket.sol is compiled with the npm solc package)")
        return None
    done = subprocess.run(
        ["node", str(BUILD_NAIVE)], check=False, capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        print(f"BASELINE SKIPPED: compiling NaiveMarket.sol failed: {done.stderr.strip()[-800:]}")
        return None
    return json.loads(done.stdout)


def run_all(life: Lifecycle, tasks: int, batch: int, claim: bool = True) -> dict[str, dict[str, float]]:
    first = life.single(claim)
    singles = [life.single(claim) for _ in range(tasks)]
    steady = {k: statistics.median(s[k] for s in singles) for k in first}
    return {"first": first, "single": steady, "batch": life.batch(batch, claim)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=100, help="tasks per createTasks")
    parser.add_argument("--tasks", type=int, default=5, help="single lifecycles measured after the first")
    args = parser.parse_args()
    print(f"machine: {machine()}")

    from decloud_magics.chain.artifact import load_artifact

    artifact = load_artifact()
    chain = Chain()
    ours = Lifecycle("TaskMarket", chain, chain.deploy(artifact["abi"], artifact["bytecode"]), "ours")
    figures = {
        "TaskMarket": run_all(ours, args.tasks, args.batch, claim=False),
        "TaskMarket, claimed": run_all(ours, args.tasks, args.batch, claim=True),
    }
    naive = compile_naive()
    if naive is not None:
        naive_chain = Chain()
        contract = naive_chain.deploy(naive["abi"], naive["bytecode"])
        figures["NaiveMarket (baseline)"] = run_all(
            Lifecycle("NaiveMarket", naive_chain, contract, "naive"), args.tasks, args.batch
        )

    rows: list[tuple[str, str, dict[str, float]]] = []
    for name, f in figures.items():
        rows += [
            (name, "first task on a fresh contract", f["first"]),
            (name, f"single task (median of {args.tasks})", f["single"]),
            (name, f"per task, batch of {args.batch}", f["batch"]),
        ]
    print(
        f"\ngas per task lifecycle (create [+ claim] + submit; each transaction includes its {BASE_TX_GAS:,} base)"
    )
    print(f"  {'contract':<24}{'case':<32}{'create':>9}{'claim':>9}{'submit':>9}{'total':>10}")
    for name, case, g in rows:
        print(
            f"  {name:<24}{case:<32}{g['create']:>9,.0f}{g['claim']:>9,.0f}{g['submit']:>9,.0f}{g['total']:>10,.0f}"
        )

    ours = figures["TaskMarket"]
    if "NaiveMarket (baseline)" in figures:
        base = figures["NaiveMarket (baseline)"]
        for name in ("TaskMarket", "TaskMarket, claimed"):
            for case in ("single", "batch"):
                ratio = figures[name][case]["total"] / base[case]["total"]
                print(f"ratio {name} / naive, {case}: {ratio:.2f}x "
                      f"({fmt(figures[name][case]['total'])} vs {fmt(base[case]['total'])})")  # fmt: skip
    single, per_task = ours["single"]["total"], ours["batch"]["total"]
    print(
        f"target: single-validator lifecycle <= {TARGET_SINGLE:,} -> {fmt(single)}, {verdict(single <= TARGET_SINGLE)}"
    )
    print(f"target: <= {TARGET_BATCH:,}/task in batches of {args.batch} -> {fmt(per_task)}, "
          f"{verdict(per_task <= TARGET_BATCH)}")  # fmt: skip
    print(f"note: two transactions cost {2 * BASE_TX_GAS:,} in base fees alone; the first task of a requester "
          "also pays once for its entry in the requester registry (the 'first task' row)")  # fmt: skip
    sys.stdout.flush()


if __name__ == "__main__":
    main()
