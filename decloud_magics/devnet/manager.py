"""The devnet as one thing: a chain node, an IPFS node and N worker processes on 127.0.0.1.

``Devnet.up`` starts what is missing and leaves what is healthy alone, so it is
safe to run twice; ``down`` stops everything it started by process group and
returns the pids that survived.

Files, all under ``decloud_home()/devnet``: ``state.json`` (see ``state``), ``requester.key``
and ``worker-N.key`` (mode 0600, kept across runs so addresses stay the same),
``logs/`` (chain and workers) and ``ipfs/`` (the js-ipfs repo and its log).
Tools (anvil, js-ipfs) live in ``DECLOUD_TOOLS`` or ``decloud_home()/tools``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from ..errors import ConfigError, NetworkUnreachable
from ..paths import decloud_home
from ..processes import pid_alive
from . import chain_node
from .ipfs_node import IpfsNode, default_tools_dir, ensure_ipfs_installed, install_hint, ipfs_installed
from .process_tree import descendants, signal_group
from .state import DevnetState, ProcessInfo, UpResult, WorkerState

_descendants = descendants  # tests import it from here, by this name

NETWORK = "devnet"
ETHER = 10**18
REQUESTER_GRANT = 1000 * ETHER
WORKER_GRANT = 10 * ETHER
DEFAULT_WORKERS = 2
DEFAULT_IPFS_PORT = 5001
_READY_LINE = "serving"  # what ``Worker.serve`` logs once it follows the market
_WORKER_READY_TIMEOUT = 120.0  # several workers importing web3 at once on 2 cores take seconds each


class Reporter(Protocol):
    """Where long work tells its progress: the CLI prints it, a library caller may ignore it."""

    def step(self, title: str) -> contextlib.AbstractContextManager[None]: ...

    def note(self, text: str) -> None: ...


class QuietReporter:
    def step(self, title: str) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def note(self, text: str) -> None:
        pass


class Devnet:
    """The devnet of this ``decloud_home()``; ``up`` and ``down`` hold a file lock, so two never race."""

    def __init__(self, tools_dir: Path | None = None) -> None:
        self.dir = decloud_home() / NETWORK
        self.state_file = self.dir / "state.json"
        self.logs = self.dir / "logs"
        self.tools_dir = Path(tools_dir or default_tools_dir()).absolute()
        self._children: list[subprocess.Popen[bytes]] = []  # reaped after a stop, or they linger as zombies
        self._ipfs: IpfsNode | None = None

    def load_state(self) -> DevnetState | None:
        try:
            return DevnetState.from_json(self.state_file.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{self.state_file} is damaged ({exc}): stop stray processes, then delete it."
            ) from None

    def _save(self, state: DevnetState) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(state.to_json())
        os.replace(tmp, self.state_file)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def requester_key_file(self) -> Path:
        """The devnet-funded notebook key (made by ``up``); the user points DECLOUD_PRIVATE_KEY at it."""
        return self.dir / "requester.key"

    def ipfs_node(self, state: DevnetState | None = None) -> IpfsNode | None:
        """The devnet's own IPFS node; None when it uses the user's ``--ipfs-api`` or is not set up."""
        state = state or self.load_state()
        if state is None or state.ipfs_external:
            return None
        if self._ipfs is None:
            api, gateway = state.ipfs_ports
            self._ipfs = IpfsNode(self.dir / "ipfs", api, gateway, Path(state.tools_dir))
        return self._ipfs

    def chain_healthy(self, state: DevnetState) -> bool:
        """The chain answers with our chain id and our contract is there (anvil keeps it in memory)."""
        if not state.contract or chain_node.chain_id(state.rpc_url) != state.chain_id:
            return False
        with contextlib.suppress(NetworkUnreachable):
            return chain_node.rpc_call(state.rpc_url, "eth_getCode", [state.contract, "latest"]) not in (
                None,
                "0x",
            )
        return False

    # -- up ------------------------------------------------------------------------

    def up(
        self,
        workers: int | None = None,
        *,
        ipfs_api: str | None = None,
        install_ipfs: bool = True,
        chain_port: int = 0,
        ipfs_port: int = 0,
        reporter: Reporter | None = None,
    ) -> UpResult:
        """Start the devnet, or bring back what died of a running one; returns once the workers serve."""
        rep = reporter or QuietReporter()
        with self._locked():
            state = self.load_state()
            if state is not None and self.chain_healthy(state):
                if ipfs_api and ipfs_api.rstrip("/") != state.ipfs_api.rstrip("/"):
                    rep.note(f"The running devnet uses the IPFS node at {state.ipfs_api}; to use {ipfs_api}, "
                             "run `decloud devnet down` first.")  # fmt: skip
                return self._repair(state, workers, rep)
            if state is not None:
                rep.note("The last devnet's chain is gone (anvil keeps it in memory): starting afresh.")
                self._stop_all(state, rep)
            return self._start(workers or DEFAULT_WORKERS, ipfs_api, install_ipfs, chain_port, ipfs_port, rep)

    def _start(
        self, n: int, ipfs_api: str | None, install_ipfs: bool, chain_port: int, ipfs_port: int, rep: Reporter
    ) -> UpResult:
        need_ipfs = ipfs_api is None and not ipfs_installed(self.tools_dir)
        if need_ipfs and not install_ipfs:
            raise ConfigError(
                f"js-ipfs is not installed in {self.tools_dir} and --no-ipfs-install was given: install it with "
                f"`{install_hint(self.tools_dir)}`, or pass --ipfs-api with the URL of an IPFS node you run."
            )
        if not chain_node.anvil_installed(self.tools_dir):
            with rep.step("Installing the chain node (anvil, 44 MB, once)"):
                chain_node.ensure_anvil_installed(self.tools_dir, rep.note)
        if need_ipfs:
            with rep.step("Installing the IPFS node (js-ipfs: about 1000 npm packages, once)"):
                ensure_ipfs_installed(self.tools_dir, rep.note)
        anvil = chain_node.AnvilNode(self.tools_dir, self.logs / "chain.log", chain_port)
        state: DevnetState | None = None
        try:
            with rep.step(f"Starting the chain node (anvil) on port {anvil.port}"):
                anvil.start()
                assert anvil.proc is not None
                self._children.append(anvil.proc)
            state = DevnetState(anvil.rpc_url, ProcessInfo.of(anvil.proc.pid), ipfs_api or "", ipfs_api is not None,
                                tools_dir=str(self.tools_dir))  # fmt: skip
            self._save(state)  # from here on, `down` can clean up whatever the rest leaves
            if ipfs_api is None:
                state.ipfs_ports = (
                    ipfs_port or chain_node.pick_port(DEFAULT_IPFS_PORT),
                    chain_node.pick_port(0),
                )
                node = self.ipfs_node(state)
                assert node is not None
                state.ipfs_api = node.api_url
                with rep.step(f"Starting the IPFS node (js-ipfs) on port {node.api_port}"):
                    node.start(timeout=120)
                state.ipfs = ProcessInfo.of(node.pid) if node.pid else None
            elif not ipfs_answers(ipfs_api):
                raise NetworkUnreachable(
                    f"No IPFS node answers at {ipfs_api}: start yours, or leave out --ipfs-api."
                )
            self._save(state)
            user_key = self._setup_chain(state, n, rep)
            self._start_workers(state, list(range(1, n + 1)), rep)
            state.started_at = time.time()
            self._save(state)
        except BaseException:  # Ctrl-C included: a half-started devnet must not keep running
            rep.note("Start-up failed: stopping what was started.")
            if state is not None and not self._stop_all(state, QuietReporter()):
                self.state_file.unlink(missing_ok=True)
            anvil.stop()
            raise
        return UpResult(state, fresh=True, user_key=user_key)

    def _setup_chain(self, state: DevnetState, n: int, rep: Reporter) -> str | None:
        """Deploy TaskMarket; fund the requester, the user's own key and the workers; save the network."""
        from ..keys import load_private_key
        from ..networks import NetworkConfig, save_network

        state.requester_key_file = str(self.requester_key_file())
        state.requester = chain_node.address_of(chain_node.key_in_file(self.requester_key_file()))
        grants = {state.requester: REQUESTER_GRANT}
        user_key = None
        with contextlib.suppress(ConfigError):  # e.g. a keystore without its password: just not funded
            found = load_private_key()
            if found is not None:
                grants[chain_node.address_of(found.reveal())] = REQUESTER_GRANT
                user_key = found.source
        state.workers = [self._worker_state(i) for i in range(1, n + 1)]
        grants.update({w.address: WORKER_GRANT for w in state.workers})
        with rep.step(f"Deploying TaskMarket and funding {len(grants)} accounts"):
            deployment = chain_node.deploy_and_fund(state.rpc_url, grants)
        state.contract, state.chain_id = deployment.contract, deployment.chain_id
        save_network(
            NetworkConfig(
                name=NETWORK, rpc_url=state.rpc_url, contract=state.contract, ipfs_api=state.ipfs_api,
                chain_id=state.chain_id, description="decloud devnet up: anvil, IPFS and workers on this machine",
            )
        )  # fmt: skip
        self._save(state)
        return user_key

    def _worker_state(self, index: int) -> WorkerState:
        key_file = self.dir / f"worker-{index}.key"
        address = chain_node.address_of(chain_node.key_in_file(key_file))
        return WorkerState(index, address, str(key_file), str(self.logs / f"worker-{index}.log"))

    def _start_workers(self, state: DevnetState, indexes: list[int], rep: Reporter) -> None:
        """Spawn ``decloud worker`` processes and wait until each logs that it is serving.

        They are one operator's workers, so they split single-validator tasks by
        ``--share`` instead of claiming each one (a transaction less per task).
        """
        if not indexes:
            return
        by_index = {w.index: w for w in state.workers}
        offsets: dict[int, int] = {}
        with rep.step(f"Starting {len(indexes)} worker{'s' * (len(indexes) > 1)}"):
            for i in indexes:
                w = by_index[i]
                offsets[i] = Path(w.log).stat().st_size if Path(w.log).exists() else 0
                with open(w.log, "ab") as log:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "decloud_magics.cli", "worker", "--network", NETWORK,
                         "--key-file", w.key_file, "--slots", "1", "--share", f"{i}/{len(state.workers)}"],
                        cwd=self.dir, env=_worker_env(), stdin=subprocess.DEVNULL, stdout=log,
                        stderr=subprocess.STDOUT, start_new_session=True,
                    )  # fmt: skip
                self._children.append(proc)
                w.process = ProcessInfo.of(proc.pid)
            self._save(state)
            deadline = time.monotonic() + _WORKER_READY_TIMEOUT
            waiting = set(indexes)
            while waiting:
                for i in sorted(waiting):
                    w, text = by_index[i], _read_from(Path(by_index[i].log), offsets[i])
                    if _READY_LINE in text:
                        waiting.discard(i)
                    elif w.process is None or not w.process.alive():
                        raise ConfigError(f"Worker {i} exited while starting: see {w.log}.\n{text[-1500:]}")
                if waiting and time.monotonic() > deadline:
                    raise ConfigError(
                        f"Workers {sorted(waiting)} did not start in {_WORKER_READY_TIMEOUT:g} s: see {self.logs}."
                    )
                time.sleep(0.1)

    def _repair(self, state: DevnetState, workers: int | None, rep: Reporter) -> UpResult:
        """The chain is alive: restart a dead IPFS node or dead workers, and match the worker count."""
        changes: list[str] = []
        if not ipfs_answers(state.ipfs_api):
            node = self.ipfs_node(state)
            if node is None:
                raise NetworkUnreachable(
                    f"Your IPFS node at {state.ipfs_api} (from --ipfs-api) does not answer: start it."
                )
            with rep.step(f"Restarting the IPFS node on port {node.api_port}"):
                node.start(timeout=120)
            state.ipfs = ProcessInfo.of(node.pid) if node.pid else None
            changes.append("restarted ipfs")
        wanted = workers if workers is not None else len(state.workers)
        extra = [w.process for w in state.workers if w.index > wanted and w.process is not None]
        if extra:
            with rep.step(f"Stopping {len(extra)} worker{'s' * (len(extra) > 1)} beyond --workers {wanted}"):
                self._stop_groups(extra, grace=10.0)
            changes += [f"stopped worker-{w.index}" for w in state.workers if w.index > wanted]
        state.workers = [w for w in state.workers if w.index <= wanted]
        known = {w.index for w in state.workers}
        new = [self._worker_state(i) for i in range(1, wanted + 1) if i not in known]
        if new:
            with rep.step(f"Funding {len(new)} new worker account{'s' * (len(new) > 1)}"):
                chain_node.fund(state.rpc_url, {w.address: WORKER_GRANT for w in new})
            state.workers = sorted(state.workers + new, key=lambda w: w.index)
        dead = [w for w in state.workers if w.process is None or not w.process.alive()]
        changes += [f"{'re' if w.process else ''}started worker-{w.index}" for w in dead]
        self._start_workers(state, [w.index for w in dead], rep)
        self._save(state)
        return UpResult(state, fresh=False, changes=changes)

    # -- down ----------------------------------------------------------------------

    def down(self, reporter: Reporter | None = None, grace: float = 10.0) -> list[int]:
        """Stop workers, the IPFS node and the chain; return the pids that survived (none, normally).

        Workers get SIGTERM and ``grace`` seconds to give back the task they
        hold, then SIGKILL; the state file is kept while anything survives, so
        ``down`` can be run again.
        """
        rep = reporter or QuietReporter()
        with self._locked():
            state = self.load_state()
            if state is None:
                return []
            survivors = self._stop_all(state, rep, grace)
            if not survivors:
                self.state_file.unlink(missing_ok=True)
            with contextlib.suppress(ConfigError, ValueError):  # a saved devnet would point at dead nodes
                from ..networks import remove_network

                remove_network(NETWORK)
            return survivors

    def _stop_all(self, state: DevnetState, rep: Reporter, grace: float = 10.0) -> list[int]:
        workers = [w.process for w in state.workers if w.process is not None]
        # Sandboxes run in sessions of their own: find them while their worker is still their parent.
        sandboxes = [ProcessInfo.of(pid) for p in workers if p.alive() for pid in descendants(p.pid)]
        with rep.step(f"Stopping {len(workers)} worker{'s' * (len(workers) != 1)}"):
            self._stop_groups(workers, grace)
            self._stop_groups(sandboxes, 0.0)
        everything = [*workers, *sandboxes, state.chain]
        node = self.ipfs_node(state)
        if node is not None:
            with rep.step("Stopping the IPFS node"):
                node.stop()
                if state.ipfs is not None:  # its pid file may be gone; the state still knows the pid
                    self._stop_groups([state.ipfs], 5.0)
                    everything.append(state.ipfs)
        with rep.step("Stopping the chain node"):
            self._stop_groups([state.chain], 5.0)
        return [p.pid for p in everything if p.alive()]

    def _stop_groups(self, procs: list[ProcessInfo], grace: float) -> None:
        """SIGTERM each process group, wait up to ``grace``, SIGKILL what is left."""
        live = [p for p in procs if p.alive()]
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            for p in live:
                signal_group(p.pid, sig)
            end = time.monotonic() + wait
            while live and time.monotonic() < end:
                time.sleep(0.05)
                live = [p for p in live if p.alive()]
        self._reap()

    def _reap(self) -> None:
        """Collect our children that ended: until then they are zombies, which ``kill(pid, 0)`` still finds."""
        for child in list(self._children):
            if child.poll() is None and not pid_alive(child.pid):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=1)  # a zombie: the wait returns at once
            if child.returncode is not None:
                self._children.remove(child)


# -- helpers ---------------------------------------------------------------------------


def ipfs_answers(api: str) -> bool:
    """Whether an IPFS node answers at ``api`` now: one try, no retries, so a dead node costs little."""
    from ..store.kubo import KuboStore

    with KuboStore(api, timeout=3, retries=0) as store:
        return store.ping()


def _worker_env() -> dict[str, str]:
    """The worker's environment: our package first on the path, the home pinned, no user keys."""
    env = dict(os.environ)
    for name in (
        "DECLOUD_PRIVATE_KEY",
        "DECLOUD_WORKER_KEY",
        "DECLOUD_KEYSTORE",
        "DECLOUD_KEYSTORE_PASSWORD",
    ):
        env.pop(name, None)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env["DECLOUD_HOME"] = str(decloud_home())
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")
    except OSError:
        return ""
