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
