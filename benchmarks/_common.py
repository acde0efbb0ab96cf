"""What the benchmark scripts share: the checkout on the path, medians taken in turns, a devnet.

Every script puts this checkout first on ``sys.path`` (and on ``PYTHONPATH``
for the processes it starts), so it measures the code beside it and not an
installed copy of the package.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TOOLS = Path(os.environ.get("DECLOUD_TOOLS") or ROOT / ".tools").absolute()

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)


def machine() -> str:
    """One line naming where the figures came from (they mean little without it)."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, load average {load}"
    )


def in_turns(actions: dict[str, Callable[[], object]], runs: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds of each action, one of each per round.

    Taking turns spreads any burst of load from elsewhere on the machine over
    every action alike, so the ratios stay fair even when the figures move.
    """
    for _ in range(warmup):
        for action in actions.values():
            action()
    samples: dict[str, list[float]] = {label: [] for label in actions}
    for _ in range(runs):
        for label, action in actions.items():
            began = time.perf_counter()
            action()
            samples[label].append(time.perf_counter() - began)
    return samples


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def quantile_ms(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


# -- dask ------------------------------------------------------------------------------


@contextlib.contextmanager
def dask_client(workers: int = 2) -> Iterator[Any]:
    """A dask client on a LocalCluster of ``workers`` single-threaded processes; None without dask."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        yield None
        return
    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


# -- the devnet ------------------------------------------------------------------------


@dataclass
class DevnetHandle:
    """A devnet the benchmark may use: the requester's key, and whether we started it."""

    devnet: Any
    key: Any
    workers: int
    started_here: bool
    home: str


def _home_without_creating() -> Path:
    """Where ``decloud_home()`` points, without making the folder as it would."""
    override = os.environ.get("DECLOUD_HOME")
    if override:
        return Path(override).expanduser()
    try:
        from jupyter_core.paths import jupyter_data_dir

        return Path(jupyter_data_dir()) / "decloud"
    except ImportError:
        return Path.home() / ".local" / "share" / "decloud"


def _running_devnet(min_workers: int) -> DevnetHandle | None:
    """The devnet of the current DECLOUD_HOME when it is up with at least ``min_workers`` workers."""
    from decloud_magics.devnet.manager import Devnet
    from decloud_magics.errors import DecloudError
    from decloud_magics.keys import load_key_file
    from decloud_magics.paths import decloud_home

    if not _home_without_creating().joinpath("devnet", "state.json").is_file():
        return None
    net = Devnet(TOOLS)
    try:
        state = net.load_state()
        if state is None or not net.chain_healthy(state):
            return None
    except (DecloudError, OSError):
        return None
    alive = sum(1 for w in state.workers if w.process is not None and w.process.alive())
    if alive < min_workers:
        print(
            f"the running devnet has {alive} live workers, fewer than {min_workers}: starting a private one"
        )
        return None
    key = load_key_file(net.requester_key_file())
    return DevnetHandle(net, key, alive, started_here=False, home=str(decloud_home()))


def _up(net: Any, workers: int, attempts: int = 2) -> None:
    """``net.up`` on ports the OS picks, once more on failure.

    Other devnets on the machine default to the same ports (8545, 5001), and a
    port found free can be taken before our node binds it.
    """
    from decloud_magics.devnet.chain_node import pick_port
    from decloud_magics.errors import DecloudError

    for attempt in range(1, attempts + 1):
        try:
            net.up(workers=workers, chain_port=pick_port(0), ipfs_port=pick_port(0))
            return
        except DecloudError as exc:
            if attempt == attempts:
                raise
            print(f"devnet up failed ({str(exc).splitlines()[0]}); trying again on other ports")
            net.down(grace=5)


@contextlib.contextmanager
def devnet(workers: int, reuse: bool = True) -> Iterator[DevnetHandle]:
    """A devnet with ``workers`` workers for the length of the block.

    With ``reuse``, a healthy devnet already running in the current
    DECLOUD_HOME is used as it is (and left running). Otherwise one is
    brought up in a temporary DECLOUD_HOME with the tools of ``.tools`` and
    torn down at the end, whatever happens in between.
    """
    if reuse:
        found = _running_devnet(workers)
        if found is not None:
            print(f"using the devnet already running in {found.home} ({found.workers} workers)")
            yield found
            return
    from decloud_magics.devnet.manager import Devnet
    from decloud_magics.keys import load_key_file

    saved = {name: os.environ.get(name) for name in ("DECLOUD_HOME", "DECLOUD_TOOLS")}
    home = tempfile.mkdtemp(prefix="decloud-bench-devnet-")
    os.environ["DECLOUD_HOME"] = home
    os.environ["DECLOUD_TOOLS"] = str(TOOLS)
    net = Devnet(TOOLS)
    try:
        began = time.perf_counter()
        _up(net, workers)
        print(f"devnet up in {home}: anvil, js-ipfs, {workers} workers ({time.perf_counter() - began:.1f} s)")
        yield DevnetHandle(
            net, load_key_file(net.requester_key_file()), workers, started_here=True, home=home
        )
    finally:
        survivors = net.down(grace=5)
        print("devnet down" + (f"; pids still alive: {survivors}" if survivors else ""))
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
