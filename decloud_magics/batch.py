"""Many runs of one cell, opened in batches: ``Client.map``.

Each element of ``inputs`` becomes a run of its own (its own package, task,
events and result), but the tasks are opened ``batch`` per ``createTasks``
transaction: one base fee and one escrow payment for the batch instead of one
per task. The batch's gas is shared among its runs. An element that cannot be
packaged (an unserializable value, a size over the limit) fails alone, before
anything is paid; the others go on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .errors import DecloudError, UsageError
from .models import DEFAULT_RESOURCES, Resources

if TYPE_CHECKING:
    from .buffers import Pieces
    from .client import Client
    from .run import Run

#: Tasks per createTasks transaction: well inside a block's gas limit (about 30k gas each).
DEFAULT_BATCH = 100


def submit_many(
    client: Client,
    code: str,
    inputs: Sequence[Mapping[str, Any]],
    outputs: Sequence[str] | None = None,
    *,
    price: str | int | None = None,
    timeout: int = 60,
    resources: Resources = DEFAULT_RESOURCES,
    validators: int = 1,
    name: str | None = None,
    trust_pickle: bool = False,
    queue_window_s: int | None = None,
    max_input_bytes: int | None = None,
    max_price: str | int | None = None,
    batch: int = DEFAULT_BATCH,
) -> list[Run]:
    """One run of ``code`` per element of ``inputs``, in order; see ``Client.map``."""
    if isinstance(inputs, Mapping) or not all(isinstance(values, Mapping) for values in inputs):
        raise UsageError("map takes a list of dicts, one per run, each mapping names to values.")
    if batch < 1:
        raise UsageError(f"batch must be at least 1 task per transaction, not {batch}.")
    price_wei = client._price_wei(price, timeout)
    client.preflight(price_wei, max_price, count=len(inputs))
    runs = [
        client._new_run(
            code,
            price_wei,
            outputs,
            name=name,
            trust_pickle=trust_pickle,
            timeout=timeout,
            validators=validators,
        )
        for _ in inputs
    ]
    paired = list(zip(runs, inputs, strict=True))
    for start in range(0, len(paired), batch):
        # each batch is stored and opened before the next is packed: workers start on the first at once
        chunk = _stored(client, paired[start : start + batch], code, outputs, max_input_bytes)
        if not chunk:
            continue
        terms = client._task_terms(timeout, queue_window_s)
        try:
            cids = [run.input_cid or "" for run in chunk]
            ids, outcome = client.conn.market.create_tasks(
                cids, price_wei, **terms, validators=validators, resources=resources
            )
        except DecloudError as exc:
            # this batch and the ones after it: nothing of them was paid
            for run in [*chunk, *(run for run, _ in paired[start + batch :])]:
                client._fail_before_chain(run, exc)
            raise
        for i, (run, task_id) in enumerate(zip(chunk, ids, strict=True)):
            gas = (_share(outcome.gas_used, len(chunk), i), _share(outcome.gas_cost_wei, len(chunk), i))
            last = i == len(chunk) - 1  # one "created" hint for the whole batch
            client._opened(run, task_id, outcome, terms["deadline"], validators, gas=gas, hint=last)
    return runs


def _stored(client: Client, pairs: Sequence[tuple[Run, Mapping[str, Any]]], code: str,
            outputs: Sequence[str] | None, max_input_bytes: int | None) -> list[Run]:  # fmt: skip
    """Pack each run's inputs and store the packages together (one request to an IPFS node);
    the runs whose package is in the store, each with its ``input_cid``. The others failed."""
    from .store.base import put_all

    packed: list[tuple[Run, Pieces]] = []
    for run, values in pairs:
        try:
            packed.append((run, client._pack(run, code, values, outputs, max_input_bytes=max_input_bytes)))
        except DecloudError as exc:
            client._fail_before_chain(run, exc)
    try:
        cids = put_all(client.conn.store, [pieces for _, pieces in packed])
    except DecloudError as exc:
        for run, _ in packed:
            client._fail_before_chain(run, exc)
        return []
    for (run, _), cid in zip(packed, cids, strict=True):
        run.input_cid = cid
    return [run for run, _ in packed]


def _share(total: int, parts: int, index: int) -> int:
    """An even split of ``total`` whose parts add up to it exactly (the first ones take the remainder)."""
    base, extra = divmod(total, parts)
    return base + (1 if index < extra else 0)
