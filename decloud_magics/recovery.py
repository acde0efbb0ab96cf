"""Runs that outlive a kernel: re-attach from the ledger and the chain; refunds; the wallet.

The ledger remembers every run with its task id and the block it was created
in; the chain remembers what happened since. Together they rebuild a ``Run``
after a restart, so a task that completed while the kernel was down still
lands, and escrow that can come back is found and reclaimed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .chain.records import ChainStatus
from .errors import ChainError, DecloudError, UsageError
from .models import Status, utcnow
from .processes import pid_alive
from .run import Result, Run

if TYPE_CHECKING:
    from .client import Client
    from .ledger import Ledger
    from .ledger_rows import RunRecord

_ENDINGS = {"TaskCompleted", "TaskFailed"}


def reattach(client: Client) -> list[Run]:
    """Follow again every run of this network the ledger shows in flight."""
    market = client.conn.market
    attached = []
    for record in client.ledger.runs_in_flight(client.network):
        if _followed_elsewhere(record):
            continue  # its kernel is still running and will land it; landing it here too would bind it twice
        if record.task_id is None:
            _close(client, record, "the kernel stopped before the task reached the chain; nothing was paid")
            continue
        if (record.contract or "").lower() != market.address.lower():
            continue  # another deployment (or another kernel's embedded chain): not ours to judge
        run = _rebuild(client, record)
        created = next((e.block for e in run.events if e.block is not None), None)
        client._adopt(run)
        seen = {e.tx_hash for e in run.events if e.tx_hash}
        if created is not None:
            for event in market.events_in(created):
                if event.task_id == record.task_id and (event.tx_hash not in seen or event.name in _ENDINGS):
                    client._on_chain_event(event)
        attached.append(run)
    return attached


def close_orphaned_local_runs(ledger: Ledger) -> list[str]:
    """Local runs whose kernel is gone can never finish: the embedded chain died with it."""
    closed = []
    for record in ledger.runs_in_flight("local"):
        pid = record.options.get("pid")
        if isinstance(pid, int) and pid_alive(pid):
            continue  # another kernel on this machine still follows it
        ledger.update_run(
            record.run_id, status=Status.FAILED.value, completed_at=utcnow(),
            error="the embedded network ended with the kernel that ran it",
        )  # fmt: skip
        closed.append(record.run_id)
    return closed


def _followed_elsewhere(record: RunRecord) -> bool:
    """The process that submitted the run is another one, still running."""
    pid = record.options.get("pid")
    return isinstance(pid, int) and pid != os.getpid() and pid_alive(pid)


def _rebuild(client: Client, record: RunRecord) -> Run:
    run = Run(
        client,
        record.run_id,
        name=record.name,
        network=record.network or client.network,
        price_wei=record.price_wei,
        trust_pickle=bool(record.options.get("trust_pickle")),
        outputs=tuple(record.outputs),
    )
    run.task_id = record.task_id
    run.input_cid = record.input_cid
    run.worker = record.worker
    run.validators = record.validators or 1
    run.gas_used = record.gas_used or 0
    run.gas_cost_wei = record.gas_cost_wei or 0
    run.deadline = int(record.deadline.timestamp()) if record.deadline else None
    run.events = client.ledger.events(record.run_id)
    run.status = record.status
    # Elapsed times count from the submission, not from this re-attach.
    run.submitted_monotonic -= max(0.0, (utcnow() - record.submitted_at).total_seconds())
    return run


def _close(client: Client, record: RunRecord, why: str) -> None:
    client.ledger.update_run(record.run_id, status=Status.FAILED.value, error=why, completed_at=utcnow())


def past_result(client: Client, run_id: str) -> tuple[RunRecord, Result]:
    """A finished run's result, fetched from the store and verified against the chain again."""
    record = client.ledger.find_run(run_id)
    if record.status in (Status.CANCELLED, Status.NOT_PROCESSED, Status.DISPUTED) or record.task_id is None:
        raise UsageError(f"Run {record.run_id} ended {record.status.value}: it has no result to show.")
    if not record.is_final:
        raise UsageError(f"Run {record.run_id} is still {record.status.value}: `%decloud wait` it first.")
    market = client.conn.market
    if (record.contract or "").lower() != market.address.lower():
        raise ChainError(
            f"Run {record.run_id} was settled on a chain this session cannot read "
            f"({record.network} at {record.contract}); its result cannot be verified here."
        )
    blocks = [e.block for e in client.ledger.events(record.run_id) if e.kind.is_final and e.block is not None]
    if not blocks:
        raise ChainError(f"The ledger has no settlement block for run {record.run_id}.")
    block = blocks[-1]
    digest = cid = None
    for event in market.events_in(block, block):
        if event.task_id != record.task_id:
            continue
        if event.name in _ENDINGS:
            digest = bytes(event.args["resultDigest"])
        if event.name in ("ResultSubmitted", "TaskFailed"):
            cid = bytes(event.args["resultCid"]).decode()
    if digest is None:
        raise ChainError(f"The chain shows no result for run {record.run_id} in block {block}.")
    trust = bool(record.options.get("trust_pickle"))
    # The same names a live run would bind: a worker's result may not plant others in the notebook.
    return record, client.fetch_result(record.run_id, cid or record.result_cid, digest, trust_pickle=trust,
                                       wanted=record.outputs)  # fmt: skip


@dataclass(frozen=True)
class Wallet:
    """What the requester's account holds; never the key."""

    network: str
    address: str
    balance_wei: int
    escrow_wei: int  # locked in this account's open tasks
    owed_wei: int  # payments the contract holds for this account (withdrawable)
    open_tasks: int


def wallet(client: Client) -> Wallet:
    market = client.conn.market
    escrow = 0
    open_tasks = 0
    for record in _tasks_of(client):
        task = market.get_task(record.task_id)  # type: ignore[arg-type]
        if task.status in (ChainStatus.OPEN, ChainStatus.CLAIMED):
            escrow += task.price_wei
            open_tasks += 1
    return Wallet(client.network, market.account, market.balance(), escrow, market.owed(), open_tasks)


def refund_all(client: Client) -> tuple[int, list[str]]:
    """Reclaim every escrow that can come back (deadline passed with no result), and withdraw what is owed.

    Returns the total wei recovered and the ids of the runs refunded.
    """
    market = client.conn.market
    now = max(int(utcnow().timestamp()), market.chain_time())
    total = 0
    refunded = []
    for record in _tasks_of(client):
        task = market.get_task(record.task_id)  # type: ignore[arg-type]
        if task.status not in (ChainStatus.OPEN, ChainStatus.CLAIMED) or task.deadline >= now:
            continue
        try:
            outcome = market.reclaim(task.task_id)
        except DecloudError:
            continue
        event = outcome.first("TaskNotProcessed")
        total += int(event.args["refund"])
        refunded.append(record.run_id)
        run = client.runs.get(record.run_id)
        if run is not None:
            client._add_gas(run, outcome.gas_used, outcome.gas_cost_wei)
            client._on_chain_event(event)
        else:
            client.ledger.update_run(
                record.run_id, status=Status.NOT_PROCESSED.value, refunded_wei=int(event.args["refund"]),
                completed_at=utcnow(), error="no worker took the task before its deadline; escrow refunded",
            )  # fmt: skip
    owed = market.owed()
    if owed:
        market.withdraw()
        total += owed
    return total, refunded


def _tasks_of(client: Client) -> list[RunRecord]:
    """Runs of this network and contract that reached the chain and may still hold escrow."""
    address = client.conn.market.address.lower()
    open_like = {Status.OPEN, Status.CLAIMED, Status.RUNNING, Status.CREATED}
    return [
        r
        for r in client.ledger.runs_in_flight(client.network)
        if r.task_id is not None and (r.contract or "").lower() == address and r.status in open_like
    ]

