"""Put a run's outputs into the notebook: streams, rich displays, returned variables."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from .networks import NetworkConfig
    from .run import Result, Run


def show_result(result: Result) -> None:
    """Replay what the cell printed and displayed on the worker, in order of kind."""
    from IPython.display import publish_display_data

    if result.stdout:
        sys.stdout.write(result.stdout)
        sys.stdout.flush()
    if result.stderr:
        sys.stderr.write(result.stderr)
        sys.stderr.flush()
    for bundle in result.displays:
        data = bundle.get("data") or {}
        if data:
            publish_display_data(data=data, metadata=bundle.get("metadata") or {})
    for name, why in result.value_errors.items():
        sys.stderr.write(f"decloud: '{name}' was not brought back: {why}\n")


def append_result(output: Any, result: Result) -> None:
    """Write a result into an ``ipywidgets.Output`` (an async run's own output area)."""
    items: list[dict[str, Any]] = []
    if result.stdout:
        items.append({"output_type": "stream", "name": "stdout", "text": result.stdout})
    if result.stderr:
        items.append({"output_type": "stream", "name": "stderr", "text": result.stderr})
    for bundle in result.displays:
        if bundle.get("data"):
            items.append({"output_type": "display_data", "data": bundle["data"],
                          "metadata": bundle.get("metadata") or {}})  # fmt: skip
    notes = [f"decloud: '{name}' was not brought back: {why}\n" for name, why in result.value_errors.items()]
    if result.error is not None:
        notes.append("\n".join(result.error._render_traceback_()) + "\n")  # type: ignore[attr-defined]
    elif result.failure:
        notes.append(result.failure + "\n")
    if notes:
        items.append({"output_type": "stream", "name": "stderr", "text": "".join(notes)})
    output.outputs = tuple(output.outputs) + tuple(items)


def show_failure(exc: Exception, output: Any = None) -> None:
    """One sentence for a run that ended without a result."""
    text = f"{type(exc).__name__}: {exc}\n"
    if output is not None:
        output.outputs = tuple(output.outputs) + ({"output_type": "stream", "name": "stderr", "text": text},)
    else:
        sys.stderr.write(text)


def bind_values(user_ns: dict[str, Any], result: Result) -> list[str]:
    """Put the returned variables into the namespace; returns the names that changed."""
    changed = []
    for name, value in result.values.items():
        user_ns[name] = value
        changed.append(name)
    return changed


def runs_table(runs: list[Run]) -> pd.DataFrame:
    import pandas as pd

    rows = [
        {
            "run_id": r.id,
            "name": r.name,
            "network": r.network,
            "status": r.status.value,
            "task_id": r.task_id,
            "worker": r.worker,
            "elapsed_s": round(r.elapsed_s, 2),
        }
        for r in runs
    ]
    return pd.DataFrame(rows, columns=["run_id", "name", "network", "status", "task_id", "worker", "elapsed_s"])


def networks_table(networks: dict[str, NetworkConfig], current: str) -> pd.DataFrame:
    import pandas as pd

    rows = [
        {
            "name": n.name,
            "current": n.name == current,
            "kind": n.kind,
            "rpc": n.rpc_url or "(in process)",
            "contract": n.contract or "(deployed on first use)",
            "ipfs_api": n.ipfs_api or "(local blockstore)",
        }
        for n in networks.values()
    ]
    return pd.DataFrame(rows).set_index("name")
