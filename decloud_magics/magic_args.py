"""The flags of each ``%decloud`` subcommand, declared so that ``%decloud?`` documents them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from IPython.core.magic_arguments import argument, magic_arguments

from .errors import UsageError


def parse_names(text: str | None) -> list[str] | None:
    """The variable names given to ``--in`` or ``--out``; ``None`` when the flag was not given."""
    if text is None:
        return None
    # magic_arguments keeps quotes: `--out ''` means "bring nothing back"
    names = [n.strip().strip("'\"") for n in text.split(",")]
    names = [n for n in names if n]
    for name in names:
        if not name.isidentifier():
            raise UsageError(f"'{name}' is not a Python variable name (give names separated by commas).")
    return names


@magic_arguments()
@argument("--network", "-n", default=None, help="network to run on (default: the current one, `local` at first)")
@argument("--price", "-p", default=None, help="price in escrow: 0.001 (native unit), 5gwei, 0.001ether")
@argument("--timeout", "-t", type=float, default=None, help="wall-clock limit of the cell on the worker, seconds")
@argument("--cpu", type=int, default=1, help="CPUs the task asks for")
@argument("--memory", type=float, default=1.0, help="memory the task asks for, GB")
@argument("--validators", type=int, default=1, help="distinct workers that must agree on the result")
@argument("--in", dest="inputs", default=None, help="names to send, comma separated (default: what the cell reads)")
@argument("--out", dest="outputs", default=None, help="names to bring back (default: what the cell assigns)")
@argument("--trust-pickle", action="store_true", help="allow values that only pickle can restore to come back")
@argument("--name", default=None, help="a label for the run in the history")
@argument("--max-price", default=None, help="refuse the run if its price is above this amount")
@argument("--async", dest="background", action="store_true",
          help="return at once; outputs and variables arrive when the run ends")
def _run_args(line: str) -> None:
    """Run the cell on the market; outputs and variables come back as if it ran here."""


@magic_arguments()
@argument("run_id", help="the run's id, or its first characters")
@argument("--timeout", "-t", type=float, default=None, help="give up waiting after this many seconds")
def _wait_args(line: str) -> None:
    """Wait for a run of this session to end and show its outputs."""


@magic_arguments()
@argument("action", nargs="?", default="list", help="list | use NAME | add NAME")
@argument("name", nargs="?", default=None)
@argument("--rpc", default=None, help="JSON-RPC URL of the chain node")
@argument("--contract", default=None, help="address of the TaskMarket contract")
@argument("--ipfs-api", default=None, help="URL of the IPFS node's Kubo RPC API")
@argument("--chain-id", type=int, default=None)
def _network_args(line: str) -> None:
    """List networks, choose the current one, or add one (no secrets are saved)."""


@magic_arguments()
@argument("--network", "-n", default=None, help="only runs of this network")
@argument("--status", "-s", default=None, help="only runs with this status (completed, failed, ...)")
@argument("--since", default=None, help="only runs submitted since: 1h, 30m, 2d, today, or a date")
@argument("--limit", type=int, default=None, help="at most this many rows, newest first")
def _history_args(line: str) -> None:
    """Every run in the ledger as a DataFrame, newest first."""


@magic_arguments()
@argument("run_id", help="the run's id, or its first characters")
def _run_id_args(line: str) -> None:
    """A run by id: `events` lists its events, `result` shows its outputs again and binds its values."""


@magic_arguments()
@argument("spec", nargs="?", default=None, help="0.05/h (per hour), 1.0 (in total), or off; none to show it")
def _budget_args(line: str) -> None:
    """Show or set the spending budget; gas counts too."""


SUBCOMMANDS: dict[str, Callable[..., Any]] = {
    "run": _run_args,
    "wait": _wait_args,
    "network": _network_args,
    "history": _history_args,
    "events": _run_id_args,
    "result": _run_id_args,
    "budget": _budget_args,
}
