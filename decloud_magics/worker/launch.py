"""How a sandbox process starts: forked from the zygote where it can be, else exec'd through ``unshare``.

Either way the process comes up to the point where it waits for its task's
config, inside its own user, PID and (unless the task may use the network)
network namespace, in its pids cgroup, with its scratch dir as cwd, HOME and
TMPDIR and an environment built from an allowlist. ``run_in_sandbox`` hands
it its task and supervises it the same way whichever way it started.

* **Forked** (``zygote.py``, ``forkserver.py``): about 3 ms of CPU. Used
  where a fork can enter namespaces of its own and the platform has pidfds.
* **Exec'd**: ``setpriv --pdeathsig KILL -- unshare --user --map-root-user
  --pid --fork --kill-child --mount-proc [--net] python -c BOOT``, 40–60 ms
  of CPU for the interpreter and the runtime's imports; without a working
  ``unshare`` the process shares the network and PID namespace (the worker
  says so in its log).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading

from . import cgroups, forkserver, landlock, zygote
from .bytecode import compile_package
from .spares import Key, Process, SpawnedProc

log = logging.getLogger("decloud_magics.worker.sandbox")

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The process cap a spare's cgroup starts with; a run writes its own when it takes the spare.
DEFAULT_MAX_PROCESSES = 64
# The bootstrap registers decloud_magics without running its __init__, which
# loads the notebook glue: the sandbox needs only the formats and the runtime.
# Its first argument is the package's folder.
_BOOT_PACKAGE = (
    "import sys,types;p=types.ModuleType('decloud_magics');p.__path__=[sys.argv[1]];sys.modules['decloud_magics']=p;"
)
# The config comes later, on stdin, so the same process can be started ahead of its task;
# the cgroup it joins meanwhile, if any, is its second argument.
_BOOT = (
    _BOOT_PACKAGE + "from decloud_magics.worker.runtime import main;"
    "main(cgroup_procs=sys.argv[2] if len(sys.argv)>2 else None)"
)
# The zygote's second argument is its control socket's fd.
_ZYGOTE_BOOT = _BOOT_PACKAGE + "from decloud_magics.worker.zygote import main;main(int(sys.argv[2]))"
_USERNS = ["unshare", "--user", "--map-root-user"]
_UNSHARE = [*_USERNS, "--pid", "--fork", "--kill-child", "--mount-proc"]
# If the worker itself dies, the kernel kills the sandbox too (and unshare's --kill-child the rest).
_SETPRIV = ["setpriv", "--pdeathsig", "KILL", "--"]
#: What unshare prints when it fails to re-raise SIGKILL on itself (util-linux 2.38).
UNSHARE_SIGKILL = b"unshare: sigprocmask unblock failed: Invalid argument\n"

_probe_lock = threading.Lock()
_unshare_cache: dict[tuple[str, bool], bool] = {}
_command_cache: dict[tuple[str, ...], bool] = {}
_servers_lock = threading.Lock()
_servers: dict[str, forkserver.ForkServer] = {}
_no_fork: set[str] = set()  # Pythons whose zygote could not start here: exec'd instead
_closing: list[bool] = []  # the interpreter is exiting: no zygote starts again


def start(key: Key, threads: int) -> Process:
    """Start a sandbox process up to the point where it waits for its config."""
    python, network = key
    isolated = unshare_works(python, network)
    compile_package(PACKAGE_DIR, python)  # once per worker: no sandbox compiles the runtime again
    scratch = tempfile.mkdtemp(prefix=f"decloud-task-{os.getpid()}-")
    cgroup = cgroups.make(DEFAULT_MAX_PROCESSES)  # joined while the process waits for its task
    try:
        server = _fork_server(python) if isolated else None
        if server is not None:
            try:
                # a forked process confines its files while it waits: the rules go in a file it reads first
                generation = landlock.generation()
                with open(os.path.join(scratch, zygote.RULES_FILE), "w") as fh:
                    json.dump(landlock.task_rules(scratch, PACKAGE_DIR), fh)
                procs_file = cgroups.procs_file(cgroup) if cgroup else None
                proc, result_fd = server.spawn(scratch, environment(scratch, threads), procs_file, network)
                return Process(proc, scratch, result_fd, zygote.RESULT_FD, threads, cgroup=cgroup,
                               confined_by=generation)  # fmt: skip
            except OSError as exc:  # the zygote died under us: exec this one, a new zygote next time
                if not _closing:
                    log.warning("the sandbox zygote failed (%s); starting this sandbox process by exec", exc)
        return _exec(python, network, isolated, scratch, cgroup, threads)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        if cgroup is not None:
            cgroups.remove(cgroup)
        raise


def _exec(python: str, network: bool, isolated: bool, scratch: str, cgroup: str | None, threads: int) -> Process:
    # Not -I: it implies -E, which would drop PYTHONHASHSEED, and equal hashing
    # is what makes honest workers print sets identically. The environment is
    # ours anyway, and sets the rest of -I (no user site, no cwd on sys.path).
    argv = [python, "-u", "-c", _BOOT, PACKAGE_DIR, *([cgroups.procs_file(cgroup)] if cgroup else [])]
    if isolated:
        argv = [*_UNSHARE, *([] if network else ["--net"]), *argv]
    argv = _with_pdeathsig(python, argv)
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    read_fd, write_fd = os.pipe()
    try:
        env = environment(scratch, threads)
        proc = SpawnedProc(argv, cwd=scratch, env=env, pass_fds=(write_fd,), start_new_session=True, **pipes)  # type: ignore[call-overload]
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return Process(proc, scratch, read_fd, write_fd, threads, cgroup=cgroup)


def _with_pdeathsig(python: str, argv: list[str]) -> list[str]:
    return [*_SETPRIV, *argv] if command_works((*_SETPRIV, python, "-c", "pass")) else argv


def _fork_server(python: str) -> forkserver.ForkServer | None:
    """The zygote for ``python``, started (again) if needed; None where forking cannot serve."""
    if python in _no_fork or _closing or not forkserver.available():
        return None
    with _servers_lock:
        server = _servers.get(python)
        if server is not None and server.alive:
            return server
        home = tempfile.mkdtemp(prefix=f"decloud-task-{os.getpid()}-zygote-")
        argv = _with_pdeathsig(python, [*_USERNS, python, "-u", "-c", _ZYGOTE_BOOT, PACKAGE_DIR])
        try:
            server = forkserver.ForkServer(argv, environment(home, 1), home)
        except (OSError, TimeoutError) as exc:
            shutil.rmtree(home, ignore_errors=True)
            _no_fork.add(python)
            log.warning("sandbox processes start by exec here (40-60 ms of CPU each): the zygote could not serve: %s",
                        exc)  # fmt: skip
            return None
        _servers[python] = server
        log.info("sandbox processes are forked from a zygote (pid %s) that never runs a cell", server.pid)
        return server


def close_fork_servers() -> None:
    """Stop every zygote (at interpreter exit): the sandbox processes they forked die with them."""
    with _servers_lock:
        _closing.append(True)
        servers = list(_servers.values())
        _servers.clear()
    for server in servers:
        server.close()
        shutil.rmtree(server.cwd, ignore_errors=True)


def environment(scratch: str, threads: int) -> dict[str, str]:
    """The whole environment of the cell: an allowlist, nothing inherited but PATH."""
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
    env = dict.fromkeys(names, str(max(1, threads)))
    env.update(
        dict.fromkeys(("PYTHONNOUSERSITE", "PYTHONSAFEPATH", "PYTHONUTF8", "PYTHONDONTWRITEBYTECODE"), "1")
    )
    # Arrow's default allocator reserves ~1 GB of address space up front,
    # which an RLIMIT_AS sized for the data would refuse.
    env.update(ARROW_DEFAULT_MEMORY_POOL="system", MALLOC_ARENA_MAX="2", MPLBACKEND="Agg", PYTHONHASHSEED="0")
    env.update(PATH=os.environ.get("PATH") or os.defpath, LANG="C.UTF-8", LC_ALL="C.UTF-8")
    return {**env, "HOME": scratch, "TMPDIR": scratch}


def unshare_works(python: str, network: bool) -> bool:
    """Whether namespaces work here (kernels and containers may forbid them); asked once per setup."""
    key = (python, network)
    if key not in _unshare_cache:
        # With --net the probe asks for more: its success answers the probe without it, and a
        # failure without it answers the probe with it. A full interpreter start is saved either way.
        known = _unshare_cache.get((python, not network))
        if known is not None and known == network:
            _unshare_cache[key] = known
            return known
        _unshare_cache[key] = command_works((*_UNSHARE, *([] if network else ["--net"]), python, "-c", "pass"))
        if not _unshare_cache[key]:
            log.warning("network isolation unavailable: `unshare` fails here, so sandboxes share the network")
    return _unshare_cache[key]


def command_works(argv: tuple[str, ...]) -> bool:
    """Whether a wrapper command runs here; probed once per process."""
    with _probe_lock:
        if argv not in _command_cache:
            quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
            try:
                done = subprocess.run(argv, **quiet, timeout=20, cwd="/", check=False)  # type: ignore[call-overload]
                _command_cache[argv] = shutil.which(argv[0]) is not None and done.returncode == 0
            except (OSError, subprocess.SubprocessError):
                _command_cache[argv] = False
        return _command_cache[argv]
