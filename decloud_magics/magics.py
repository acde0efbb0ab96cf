"""``%%decloud`` and ``%decloud``: parse, route to the client, render. No work lives here."""

from __future__ import annotations

import inspect
import shlex
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError as IPythonUsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import parse_argstring
from traitlets import Float, Integer, Unicode, validate

from . import render
from .errors import DecloudError, UsageError
from .magic_args import SUBCOMMANDS, parse_names
from .models import Resources
from .units import parse_amount
from .widgets import RunPanel, frontend_mode

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from .client import Client
    from .models import RunEvent
    from .run import Result, Run


LINE_COMMANDS = ("wait", "runs", "network", "history", "events", "result", "summary", "budget", "wallet", "refund")


@magics_class
class DecloudMagics(Magics):
    """The notebook face of ``decloud_magics.Client``; settings work with ``%config DecloudMagics.x = …``."""

    shell: InteractiveShell  # type: ignore[assignment]  # set by IPython when it loads the extension
    network = Unicode("local", config=True, help="Network a run uses when --network is not given.")
    default_price = Unicode("0.0001ether", config=True, help="Price of a run when --price is not given.")
    default_timeout = Float(60.0, config=True, help="Wall-clock limit of a cell on the worker, seconds.")
    max_input_mb = Float(100.0, config=True, help="Largest input a run may send, in MB.")
    queue_window = Integer(120, config=True, help="Seconds a task may wait for a worker before it is refunded.")

    @validate("default_price")
    def _check_price(self, proposal: Any) -> str:
        parse_amount(proposal["value"])
        return str(proposal["value"])

    @validate("default_timeout")
    def _check_timeout(self, proposal: Any) -> float:
        if proposal["value"] <= 0:
            raise ValueError("default_timeout must be a positive number of seconds")
        return float(proposal["value"])

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self._clients: dict[str, Client] = {}
        self._runs: dict[str, Run] = {}
        self._panels: dict[str, RunPanel] = {}
        self._landed: set[str] = set()  # runs whose outputs were shown and values bound: never twice
        self._landing = threading.Lock()
        self._ready: list[Run] = []  # async runs that ended, waiting for the kernel's loop to land them

    def on_load(self) -> None:
        """Nothing heavy happens at load; runs left in flight by a previous kernel are picked up."""
        self.shell.events.register("pre_run_cell", self._land_ready)
        try:
            self.reattach()
        except DecloudError as exc:
            print(f"decloud: could not re-attach to earlier runs: {exc}", file=sys.stderr)

    def reattach(self) -> list[Run]:
        """Follow again the runs a previous kernel left in flight; they land before the next cell."""
        from .ledger import Ledger
        from .recovery import close_orphaned_local_runs

        ledger = Ledger()
        close_orphaned_local_runs(ledger)
        attached: list[Run] = []
        for name in sorted({r.network for r in ledger.runs_in_flight() if r.network and r.network != "local"}):
            client = self.client(name)
            runs = client.reattach()
            if runs:
                print(f"decloud: re-attached to {len(runs)} run(s) on {name}: {', '.join(r.id for r in runs)}",
                      file=sys.stderr)  # fmt: skip
            for run in runs:
                self._runs[run.id] = run
                # Shown under this cell like a fresh run's panel: a frontend drops stream output that
                # arrives after its cell ended, so the run's outputs must land in the panel's own area.
                panel = RunPanel(run, symbol=client.config.symbol, mode=frontend_mode(self.shell)).show()
                self._panels[run.id] = panel
                run.on("*", self._lander(run))
            attached += runs
        return attached

    def on_unload(self) -> None:
        try:
            self.shell.events.unregister("pre_run_cell", self._land_ready)
        except ValueError:
            pass
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def client(self, network: str | None = None) -> Client:
        from .client import Client

        name = network or self.network
        if name not in self._clients:
            self._clients[name] = Client(name, default_price=self.default_price, queue_window_s=self.queue_window)
        return self._clients[name]

    # -- routing --------------------------------------------------------------

    @line_cell_magic
    def decloud(self, line: str, cell: str | None = None) -> Any:
        """Run cells on a decentralized compute market.

        %%decloud run [options] runs the cell; the line subcommands are wait, runs,
        network, history, events, result, summary, budget, wallet and refund.
        """
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise IPythonUsageError(f"Could not read the options: {exc}.") from None
        command = words[0] if words else ""
        rest = line.strip()[len(command) :]
        try:
            if command not in ("run", "", "help", *LINE_COMMANDS):
                raise UsageError(
                    f"Unknown subcommand '{command}': use one of run, {', '.join(LINE_COMMANDS)} (see %decloud?)."
                )
            if command == "run":
                if cell is None:
                    raise UsageError("`run` runs a cell: write %%decloud run on the first line of a cell.")
                return self.run_cell(rest, cell)
            if cell is not None:
                raise UsageError(f"%%decloud {command} is not a cell magic; only `%%decloud run` takes a cell.")
            if command == "wait":
                return self.wait(rest)
            if command == "runs":
                return self.list_runs()
            if command == "network":
                return self.network_command(rest)
            if command in ("history", "events", "result", "summary", "budget", "wallet", "refund"):
                return getattr(self, f"cmd_{command}")(rest)
            print(self.decloud.__doc__)
            return None
        except UsageError as exc:
            raise IPythonUsageError(str(exc)) from None

    def _parse(self, name: str, rest: str) -> Any:
        try:
            return parse_argstring(SUBCOMMANDS[name], rest)
        except IPythonUsageError as exc:  # argparse's own words, which name neither the command nor the help
            magic = "%%decloud" if name == "run" else "%decloud"
            raise UsageError(f"{magic} {name}: {str(exc).rstrip('.')} (see %decloud? for its options).") from None

    # -- run -------------------------------------------------------------------

    def run_cell(self, rest: str, cell: str) -> None:
        args = self._parse("run", rest)
        if args.memory <= 0 or args.cpu <= 0:
            raise UsageError("--cpu and --memory must be more than zero.")
        if args.validators < 1 or args.validators > 16:
            raise UsageError(f"--validators must be between 1 and 16, not {args.validators}.")
        timeout = self.default_timeout if args.timeout is None else args.timeout
        if timeout <= 0:
            raise UsageError(f"--timeout must be a positive number of seconds, not {args.timeout:g}.")
        price = args.price if args.price is not None else self.default_price
        parse_amount(price)  # a wrong amount is a usage error before anything starts
        client = self.client(args.network)
        user_ns = self.shell.user_ns
        run = client.submit(
            cell,
            namespace=user_ns,
            input_names=parse_names(args.inputs),
            outputs=parse_names(args.outputs),
            price=price,
            timeout=int(max(1, round(timeout))),
            resources=Resources(cpus=args.cpu, memory_mb=int(args.memory * 1024)),
            validators=args.validators,
            name=args.name,
            trust_pickle=args.trust_pickle,
            max_input_bytes=int(self.max_input_mb * 1e6),
            max_price=args.max_price,
        )
        self._runs[run.id] = run
        panel = RunPanel(run, symbol=client.config.symbol, mode=frontend_mode(self.shell)).show()
        self._panels[run.id] = panel
        if args.background:
            run.on("*", lambda event: self._schedule_landing(run) if event.is_final else None)
            return None
        return self._finish(run)

    def _finish(self, run: Run, timeout: float | None = None) -> None:
        """Wait in the foreground, then show the outputs under the panel and bind the values."""
        try:
            run.wait(timeout)
        except KeyboardInterrupt:
            print(f"Stopped waiting; run {run.id} goes on. `%decloud wait {run.id}` picks it up.", file=sys.stderr)
            return
        result = self._land(run, into_panel=False)
        if result is not None:
            result.raise_for_error()

    def _land(self, run: Run, *, into_panel: bool) -> Result | None:
        """Show a finished run's outputs and bind its values, exactly once per run."""
        with self._landing:
            if run.id in self._landed:
                return None
            self._landed.add(run.id)
        panel = self._panels.get(run.id)
        try:
            result = run.result()
        except DecloudError as exc:
            if panel is not None:
                panel.finish([])
            if into_panel:
                render.show_failure(exc, panel.output if panel else None)
                return None
            raise
        changed = render.bind_values(self.shell.user_ns, result)
        if panel is not None:
            panel.finish(changed)
        if into_panel and panel is not None and panel.output is not None:
            render.append_result(panel.output, result)
        elif into_panel:
            render.show_result(result)
            if not result.ok:
                print(f"decloud run {run.id}: {result.error or result.failure}", file=sys.stderr)
        else:
            render.show_result(result)
        return result

    def _lander(self, run: Run) -> Callable[[RunEvent], None]:
        """A callback that schedules ``run``'s landing once its final event comes."""

        def land(event: RunEvent) -> None:
            if event.is_final:
                self._schedule_landing(run)

        return land

    def _schedule_landing(self, run: Run) -> None:
        """Called on the watcher thread: land on the kernel's own loop, never mid-cell."""
        kernel = getattr(self.shell, "kernel", None)
        io_loop = getattr(kernel, "io_loop", None)
        if io_loop is not None:
            io_loop.add_callback(self._land, run, into_panel=True)
        else:  # no kernel loop (terminal, tests): land before the next cell runs
            with self._landing:
                self._ready.append(run)

    def _land_ready(self, *_: Any) -> None:
        with self._landing:
            ready, self._ready = self._ready, []
        for run in ready:
            self._land(run, into_panel=True)

    # -- other subcommands --------------------------------------------------------

    def wait(self, rest: str) -> None:
        args = self._parse("wait", rest)
        matches = [r for rid, r in self._runs.items() if rid.startswith(args.run_id)]
        if len(matches) != 1:
            raise UsageError(
                f"{'No' if not matches else 'More than one'} run of this session starts with '{args.run_id}'; "
                "`%decloud runs` lists them."
            )
        run = matches[0]
        with self._landing:
            if run in self._ready:
                self._ready.remove(run)
        return self._finish(run, args.timeout)

    def list_runs(self) -> Any:
        """The runs of this session that are still in flight."""
        return render.runs_table([r for r in self._runs.values() if not r.done()])

    # -- the ledger's views --------------------------------------------------------

    def cmd_history(self, rest: str) -> Any:
        args = self._parse("history", rest)
        return self.client().history(network=args.network, status=args.status, since=args.since, limit=args.limit)

    def cmd_events(self, rest: str) -> Any:
        return self.client().events(self._parse("events", rest).run_id)

    def cmd_result(self, rest: str) -> None:
        """Show a past run's outputs again and bind its values, fetched and verified anew."""
        result = self.client().past_result(self._parse("result", rest).run_id)
        render.show_result(result)
        changed = render.bind_values(self.shell.user_ns, result)
        if changed:
            print(f"decloud: set {', '.join(changed)}", file=sys.stderr)
        result.raise_for_error()

    def cmd_summary(self, rest: str) -> Any:
        return self.client().summary()

    def cmd_budget(self, rest: str) -> None:
        from .units import format_amount

        args = self._parse("budget", rest)
        client = self.client()
        if args.spec is not None:
            client.set_budget(args.spec)
        budget = client.budget
        symbol = client.config.symbol
        if budget is None:
            print(f"No budget is set; {format_amount(client.spent_wei(), symbol)} spent in all. "
                  "Set one with %decloud budget 0.05/h or %decloud budget 1.0.")  # fmt: skip
            return
        spent = client.spent_wei(budget)
        left = max(0, budget.limit_wei - spent)
        print(f"Budget {budget.describe(symbol)}: {format_amount(spent, symbol)} spent, "
              f"{format_amount(left, symbol)} left.")  # fmt: skip

    def cmd_wallet(self, rest: str) -> None:
        from .units import format_amount

        client = self.client()
        w = client.wallet()
        symbol = client.config.symbol
        print(f"network  {w.network}\naddress  {w.address}\nbalance  {format_amount(w.balance_wei, symbol)}\n"
              f"escrow   {format_amount(w.escrow_wei, symbol)} locked in {w.open_tasks} open task(s)\n"
              f"owed     {format_amount(w.owed_wei, symbol)} withdrawable")  # fmt: skip

    def cmd_refund(self, rest: str) -> None:
        from .units import format_amount

        client = self.client()
        total, runs = client.refund()
        what = f" from {len(runs)} run(s): {', '.join(runs)}" if runs else ""
        print(f"Reclaimed {format_amount(total, client.config.symbol)}{what}.")

    def network_command(self, rest: str) -> Any:
        from .networks import RPC, NetworkConfig, get_network, list_networks, save_network

        args = self._parse("network", rest)
        if args.action == "list":
            return render.networks_table(list_networks(), current=self.network)
        if args.action == "use" or (args.action not in ("add",) and args.name is None):
            name = args.name if args.action == "use" else args.action
            if name is None:
                raise UsageError("Say which network: %decloud network use NAME.")
            get_network(name)  # unknown names fail here with the list of known ones
            self.network = name
            print(f"Runs now go to the '{name}' network.")
            return None
        if args.action == "add":
            if not args.name:
                raise UsageError("Give the new network a name: %decloud network add NAME --rpc URL ...")
            path = save_network(
                NetworkConfig(
                    name=args.name, kind=RPC, rpc_url=args.rpc, contract=args.contract,
                    ipfs_api=args.ipfs_api, chain_id=args.chain_id,
                )
            )  # fmt: skip
            print(f"Saved network '{args.name}' in {path} (no secrets are stored there).")
            return None
        raise UsageError(f"Unknown network action '{args.action}': use list, use NAME or add NAME.")


def _compose_help() -> str:
    parts = [inspect.cleandoc(DecloudMagics.decloud.__doc__ or "")]
    for name, func in SUBCOMMANDS.items():
        usage = (func.__doc__ or "").replace("::\n\n  ", "").strip()
        usage = usage.replace(f"%{func.__name__}", f"%%decloud {name}" if name == "run" else f"%decloud {name}")
        parts.append(f"\n{name}\n{'-' * len(name)}\n{usage}")
    return "\n".join(parts)


DecloudMagics.decloud.__doc__ = _compose_help()
