"""How a run ends: fetch and verify its result, or record why there is none.

The worker's bytes are untrusted: they are fetched by CID (the store checks
them against it), checked against the digest the chain recorded, and decoded
with safe formats only; nothing here trusts a cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .chain.records import MarketEvent
from .errors import DecloudError, IntegrityError, RemoteError, RunFailed
from .models import EventKind, Status
from .panel import short_address as _short
from .run import Result, Run
from .units import format_amount

if TYPE_CHECKING:
    from .client import Client
    from .store.base import Store


def settle(client: Client, run: Run, digest: bytes, where: dict[str, Any], paid: int) -> None:
    """Fetch the result by its CID, check it against the chain's digest, decode it safely."""
    try:
        result = client.load_result(run, run.result_cid, digest)
    except (IntegrityError, DecloudError) as exc:
        message = f"the result was refused: {exc}"
        client.ledger.update_run(run.id, error=message)
        run._finish(EventKind.FAILED, failure=RunFailed(message), message=message,
                    data={"reason": "verification"}, **where)  # fmt: skip
        return
    client.ledger.update_run(run.id, result_cid=run.result_cid, result_digest=digest.hex())
    if result.error is not None:
        message = f"the cell raised {result.error.ename}: {result.error.evalue}"
        reason = "cell_raised"
    elif result.failure is not None:
        message = result.failure
        reason = "sandbox"
    else:
        kind = EventKind.COMPLETED
        message = f"completed; worker paid {format_amount(paid, client.config.symbol)}"
        run._finish(kind, result=result, message=message,
                    data={"result_cid": run.result_cid, "paid": paid}, **where)  # fmt: skip
        return
    client.ledger.update_run(run.id, error=message, refunded_wei=run.refunded_wei)
    run._finish(EventKind.FAILED, result=result, message=message,
                data={"reason": reason, "result_cid": run.result_cid, "refund": run.refunded_wei},
                **where)  # fmt: skip

def end_without_result(client: Client, run: Run, event: MarketEvent, where: dict[str, Any]) -> None:
    symbol = client.config.symbol
    data: dict[str, Any]
    if event.name == "TaskDisputed":
        run.refunded_wei = run.price_wei
        workers = [str(w) for w in event.args["workers"]]
        message = f"validators disagreed ({', '.join(_short(w) for w in workers)}); escrow refunded"
        kind, data = EventKind.DISPUTED, {"workers": workers,
                                          "digests": [bytes(d).hex() for d in event.args["digests"]]}  # fmt: skip
    else:
        run.refunded_wei = int(event.args["refund"])
        if event.name == "TaskCancelled":
            kind, message = EventKind.CANCELLED, f"cancelled; {format_amount(run.refunded_wei, symbol)} refunded"
        else:
            kind = EventKind.NOT_PROCESSED
            message = (
                f"no worker took the task before its deadline; {format_amount(run.refunded_wei, symbol)} "
                "refunded. Try a higher --price or a longer wait."
            )
        data = {"refund": run.refunded_wei}
    client.ledger.update_run(run.id, refunded_wei=run.refunded_wei, error=message)
    run._finish(kind, failure=RunFailed(f"Run {run.id}: {message.rstrip('.')}."), message=message, data=data,
                **where)

def fetch_result(store: Store, run_id: str, cid: str | None, digest: bytes, *, trust_pickle: bool = False,
             wanted: Sequence[str] | None = None) -> Result:  # fmt: skip
    """Fetch by CID (the store checks the bytes against it), then check the chain's digest.

    Only ``wanted`` names are bound: a worker must not be able to overwrite
    notebook names the cell never asked for (``print``, ``display``...).
    """
    from .package import decode_result, decode_values, result_digest

    if not cid:
        raise IntegrityError(f"Run {run_id} has no result CID on chain.")
    data = store.get(cid)
    if result_digest(data) != digest:
        raise IntegrityError(
            f"the bytes stored under {cid} do not match the digest the chain recorded; "
            "the worker's result was altered and is not used"
        )
    # The digest covers every blob, so the package need not hash them again.
    package = decode_result(data, verify=False)
    value_errors = dict(package.value_errors)
    values = decode_values(package, trust_pickle=trust_pickle, errors=value_errors, only=wanted)
    error = None
    if package.error is not None:
        error = RemoteError(package.error.ename, package.error.evalue, list(package.error.traceback))
    return Result(
        run_id=run_id,
        status=Status.COMPLETED if error is None and not package.failure else Status.FAILED,
        stdout=package.stdout,
        stderr=package.stderr,
        displays=list(package.displays),
        values=values,
        value_errors=value_errors,
        error=error,
        failure=package.failure,
        result_cid=cid,
        timings=dict(package.timings),
    )
