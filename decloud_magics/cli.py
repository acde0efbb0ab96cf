"""``decloud`` on the command line: version, run a file, a demo, a worker, the devnet."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from ._version import __version__
from .errors import DecloudError

if TYPE_CHECKING:
    from .models import RunEvent
    from .run import Run


def _progress(run: Run, stream: TextIO | None = None) -> None:
    """One line per stage on stderr: the CLI's progress, the panel's text form."""
    out = stream or sys.stderr

    def line(event: RunEvent) -> None:
        if event.kind.value == "stdout":
            return
        print(f"  [{event.data.get('elapsed_s', 0):6.2f}s] {event.kind.value:<13} {event.message}", file=out)

    run.on("*", line)


def cmd_run(args: argparse.Namespace) -> int:
    from .client import Client
    from .models import Resources

    code = Path(args.file).read_text()
    with Client(args.network, default_price=args.price) as client:
        run = client.submit(
            code, price=args.price, timeout=args.timeout, resources=Resources(cpus=args.cpu),
            name=args.name or Path(args.file).name,
        )  # fmt: skip
        print(f"run {run.id} on {client.network}", file=sys.stderr)
        _progress(run)
        result = run.result()
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        for name, value in result.values.items():
            print(f"{name} = {value!r}")
        if result.error is not None:
            print("\n".join(result.error.traceback), file=sys.stderr)
            return 1
        if result.failure:
            print(result.failure, file=sys.stderr)
            return 1
    return 0


DEMO_CELLS = [
    ("sum of a DataFrame column", 'total = int(df["x"].sum())\nprint("sum is", total)'),
    ("a new DataFrame comes back", 'squares = df.assign(y=df["x"] ** 2)\nsquares.tail(3)'),
    ("an error is shown like a local one", "ratio = total / 0"),
]


def cmd_demo(args: argparse.Namespace) -> int:
    import pandas as pd

    from .client import Client
    from .units import format_amount

    namespace: dict[str, object] = {"pd": pd, "df": pd.DataFrame({"x": range(10)})}
    with Client(args.network) as client:
        print(f"decloud demo on the '{client.network}' network (account {client.account})\n")
        for title, code in DEMO_CELLS:
            print(f"--- {title}\n{code}")
            run = client.submit(code, namespace=namespace, timeout=30)
            _progress(run, sys.stdout)
            result = run.result()
            namespace.update(result.values)
            if result.stdout:
                print("stdout:", result.stdout.rstrip())
            for name, value in result.values.items():
                print(f"back in the namespace: {name} =", value if not hasattr(value, "shape") else value.shape)
            if result.error is not None:
                print(f"remote error: {result.error.ename}: {result.error.evalue}")
            symbol = client.config.symbol
            print(f"cost: {format_amount(run.total_cost_wei, symbol)} (price {format_amount(run.price_wei, symbol)}"
                  f" + {run.gas_used:,} gas)\n")  # fmt: skip
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="decloud", description="Run Python on a decentralized compute market.")
    parser.add_argument("--version", action="version", version=f"decloud {__version__}")
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser("run", help="run a Python file as one task and print what came back")
    run.add_argument("file")
    run.add_argument("--network", "-n", default="local")
    run.add_argument("--price", "-p", default="0.0001ether")
    run.add_argument("--timeout", "-t", type=int, default=60)
    run.add_argument("--cpu", type=int, default=1)
    run.add_argument("--name", default=None)
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="run a few cells on the embedded network and show what came back")
    demo.add_argument("--network", "-n", default="local")
    demo.set_defaults(func=cmd_demo)

    from .worker.cli import add_worker_parser

    add_worker_parser(sub)
    from .devnet.cli import add_devnet_parser

    add_devnet_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except DecloudError as exc:
        print(f"decloud: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
