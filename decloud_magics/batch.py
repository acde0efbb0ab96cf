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
from .models import Resources
from .units import parse_amount

if TYPE_CHECKING:
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
    resources: Resources = Resources(),
    validators: int = 1,
    name: str | None = None,
    trust_pickle: bool = False,
    queue_window_s: int | None = None,
    max_input_bytes: int | None = None,
    max_price: str | int | None = None,
    batch: int = DEFAULT_BATCH,
) -> list[Run]:
    """One run of ``code`` per element of ``inputs``, in order; see ``Client.map``."""
    from .client import LEASE_GRACE_S

    if isinstance(inputs, Mapping) or not all(isinstance(values, Mapping) for values in inputs):
        raise UsageError("map takes a list of dicts, one per run, each mapping names to values.")
    if timeout <= 0:
        raise UsageError(f"--timeout must be a positive number of seconds, not {timeout}.")
    if batch < 1:
        raise UsageError(f"batch must be at least 1 task per transaction, not {batch}.")
    price_wei = client.default_price_wei if price is None else parse_amount(price)
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
        )  # fmt: skip
        for _ in inputs
    ]
    ready: list[Run] = []
    for run, values in zip(runs, inputs, strict=True):
        try:
            client._package(run, code, values, outputs, max_input_bytes=max_input_bytes)
        except DecloudError as exc:
            client._fail_before_chain(run, exc)
        else:
            ready.append(run)

    market = client.conn.market
    for start in range(0, len(ready), batch):
        chunk = ready[start : start + batch]
        deadline = market.chain_time() + timeout + (queue_window_s or client.queue_window_s)
        try:
            ids, outcome = market.create_tasks(
                [run.input_cid or "" for run in chunk],
                price_wei,
                timeout=int(timeout),
                lease=int(timeout) + LEASE_GRACE_S,
                deadline=deadline,
                validators=validators,
                resources=resources,
            )
        except DecloudError as exc:
            for run in ready[start:]:  # this batch and the ones after it: nothing of them was paid
                client._fail_before_chain(run, exc)
            raise
        for i, (run, task_id) in enumerate(zip(chunk, ids, strict=True)):
            gas = (_share(outcome.gas_used, len(chunk), i), _share(outcome.gas_cost_wei, len(chunk), i))
            client._opened(run, task_id, outcome, deadline, validators, gas=gas, hint=i == len(chunk) - 1)
    return runs


def _share(total: int, parts: int, index: int) -> int:
    """An even split of ``total`` whose parts add up to it exactly (the first ones take the remainder)."""
    base, extra = divmod(total, parts)
    return base + (1 if index < extra else 0)
