"""Install and run a real IPFS node (js-ipfs) for the devnet and the tests.

Kubo's npm package downloads its binary from outside the package registries
at install time, which fails on locked-down machines; js-ipfs 0.66.1 comes
whole from npm and speaks the same Kubo RPC API. It needs Node 22 (its
``mortice`` dependency breaks on Node 20), so the npm ``node-<os>-<arch>@22``
package is installed beside it and runs it, whatever node is on PATH.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError, NetworkUnreachable
from ..processes import signal_group

if TYPE_CHECKING:
    from typing_extensions import Self

IPFS_VERSION = "0.66.1"
NODE_MAJOR = "22"
_MARKER = ".decloud-ipfs-installed"
_INSTALL_TIMEOUT = 1200.0  # npm resolves ~1000 packages: minutes, not hours


def node_package() -> str:
    """The npm package that ships a Node 22 binary for this machine."""
    plat = {"linux": "linux", "darwin": "darwin"}.get(sys.platform)
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower()
    )
    if plat is None or arch is None:
        raise ConfigError(
            f"The devnet IPFS node runs on Linux or macOS (x64/arm64), not {sys.platform}/{platform.machine()}: "
            "use the local network, or point --ipfs-api at an IPFS node you run yourself."
        )
    return f"node-{plat}-{arch}"


def install_command(tools_dir: Path) -> list[str]:
    """The npm command that installs js-ipfs and Node 22 into ``tools_dir``."""
    return [
        "npm", "install", "--prefix", str(tools_dir), "--save-exact", "--no-audit", "--no-fund",
        f"ipfs@{IPFS_VERSION}", f"{node_package()}@{NODE_MAJOR}",
    ]  # fmt: skip


def install_hint(tools_dir: Path) -> str:
    """The one command to show users, so a skip or an error says exactly what to run."""
    return f"{Path(sys.executable).name} -m decloud_magics.devnet.ipfs_node install {tools_dir}"


def default_tools_dir() -> Path:
    """Where devnet tools live: ``DECLOUD_TOOLS`` or a ``tools`` folder in the decloud home."""
    override = os.environ.get("DECLOUD_TOOLS")
    if override:
        return Path(override).expanduser()
    from ..paths import decloud_home

    return decloud_home() / "tools"


def ipfs_cli(tools_dir: Path) -> Path:
    return Path(tools_dir) / "node_modules" / "ipfs" / "src" / "cli.js"


def node_binary(tools_dir: Path) -> Path:
    return Path(tools_dir) / "node_modules" / node_package() / "bin" / "node"


def ipfs_installed(tools_dir: Path) -> bool:
    """Whether a complete install is there (the marker is written only after npm succeeded)."""
    tools_dir = Path(tools_dir)
    return (
        (tools_dir / _MARKER).is_file() and ipfs_cli(tools_dir).is_file() and node_binary(tools_dir).is_file()
    )


def ensure_ipfs_installed(tools_dir: Path, progress: Callable[[str], None] | None = None) -> Path:
    """Install js-ipfs and Node 22 once (about 3 minutes); return the js-ipfs CLI script."""
    tools_dir = Path(tools_dir)
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if ipfs_installed(tools_dir):
        return ipfs_cli(tools_dir)
    if shutil.which("npm") is None:
        raise ConfigError(
            "npm was not found on PATH, and the devnet IPFS node is installed with it: install Node.js 20 or newer "
            "with npm, then run this again."
        )
    tools_dir.mkdir(parents=True, exist_ok=True)
    with open(tools_dir / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two npm runs in one prefix corrupt it; released on close
        if ipfs_installed(tools_dir):  # another process finished it while we waited
            return ipfs_cli(tools_dir)
        manifest = tools_dir / "package.json"
        if not manifest.exists():
            # Without a manifest here npm may adopt a package.json in a parent folder.
            manifest.write_text(json.dumps({"name": "decloud-tools", "private": True}, indent=2) + "\n")
        say(
            f"Installing js-ipfs {IPFS_VERSION} and Node {NODE_MAJOR} into {tools_dir} "
            "(about 1000 npm packages; usually 3-4 minutes, once)..."
        )
        started = time.monotonic()
        log_path = tools_dir / "npm-install.log"
        _run_with_heartbeat(install_command(tools_dir), log_path, say, started)
        if not (ipfs_cli(tools_dir).is_file() and node_binary(tools_dir).is_file()):
            raise ConfigError(
                f"npm finished but js-ipfs or Node {NODE_MAJOR} is missing in {tools_dir}: see {log_path}, "
                f"delete {tools_dir / 'node_modules'} and run again."
            )
        (tools_dir / _MARKER).write_text(f"ipfs@{IPFS_VERSION} {node_package()}@{NODE_MAJOR}\n")
        say(f"js-ipfs installed in {time.monotonic() - started:.0f} s.")
    return ipfs_cli(tools_dir)


def _run_with_heartbeat(cmd: list[str], log_path: Path, say: Callable[[str], None], started: float) -> None:
    """Run npm with its output in a log, saying every 20 s that it is still going."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        try:
            while True:
                try:
                    rc = proc.wait(timeout=20)
                    break
                except subprocess.TimeoutExpired:
                    elapsed = time.monotonic() - started
                    if elapsed > _INSTALL_TIMEOUT:
                        raise ConfigError(
                            f"npm install did not finish within {_INSTALL_TIMEOUT:.0f} s: check access to the npm "
                            f"registry (see {log_path}) and run again."
                        ) from None
                    say(f"  ... still installing ({elapsed:.0f} s)")
        finally:
            if proc.poll() is None:
                _kill_group(proc)
    if rc != 0:
        raise ConfigError(
            f"npm install failed with exit code {rc}: see {log_path} and run again.\n" + _tail(log_path)
        )


def free_port(port: int = 0) -> int:
    """``port`` if nothing listens on it (0: one the OS picks); ConfigError if it is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a just-stopped node's TIME_WAIT is fine
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise ConfigError(
                f"Port {port} on 127.0.0.1 is taken by another program: stop it, or give the IPFS node "
                "other ports (0 picks free ones)."
            ) from None
        return int(s.getsockname()[1])


class IpfsNode:
    """One js-ipfs daemon, offline and bound to localhost, owning ``repo``."""

    def __init__(
        self, repo: Path, api_port: int = 0, gateway_port: int = 0, tools_dir: Path | None = None
    ) -> None:
        # Absolute, because the daemon runs with the repo as its working directory.
        self.repo = Path(repo).absolute()
        # Ports are fixed once, so a restarted node keeps the URL clients hold.
        self.api_port = api_port or free_port()
        self.gateway_port = gateway_port or free_port()
        self.tools_dir = (Path(tools_dir) if tools_dir is not None else default_tools_dir()).absolute()
        self.log_path = self.repo / "daemon.log"
        self._pid_file = self.repo / "daemon.pid"
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"IpfsNode(repo={str(self.repo)!r}, api_url={self.api_url!r}, pid={self.pid})"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def is_running(self) -> bool:
        return self.pid is not None

    def start(self, timeout: float = 60.0) -> None:
        """Init the repo if new, write its config, start the daemon and wait until its API answers.

        The repo has one owner: a daemon an earlier process left running on it
        is stopped first, so the config just written is the one in force.
        """
        if self.is_running():
            return
        if not ipfs_installed(self.tools_dir):
            raise ConfigError(
                f"js-ipfs is not installed in {self.tools_dir}: run `{install_hint(self.tools_dir)}` "
                "(npm, about 3 minutes, once)."
            )
        deadline = time.monotonic() + timeout
        self.repo.mkdir(parents=True, exist_ok=True)
        self._stop_leftover()
        if not (self.repo / "config").is_file():
            self._cli(["init", "--profile", "test"], timeout=max(5.0, deadline - time.monotonic()))
        peer_id = self._write_config()
        free_port(self.api_port), free_port(self.gateway_port)
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- starting js-ipfs daemon, API {self.api_url} ---\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self._command("daemon", "--offline", "--enable-preload=false"),
                env=self._env(),
                cwd=self.repo,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so stop() reaches every child
            )
        self._pid_file.write_text(str(self._proc.pid))
        self._wait_ready(deadline, timeout, peer_id)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the daemon and everything it started; SIGKILL if SIGTERM is ignored."""
        if self._proc is not None:
            _kill_group(self._proc, timeout)
            self._proc = None
        else:
            self._stop_leftover(timeout)
        for name in ("daemon.pid", "api"):
            with contextlib.suppress(OSError):
                (self.repo / name).unlink()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals ----------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["IPFS_PATH"] = str(self.repo)
        env.pop("DEBUG", None)  # js debug logging would flood the log file
        return env

    def _command(self, *args: str) -> list[str]:
        return [str(node_binary(self.tools_dir)), str(ipfs_cli(self.tools_dir)), *args]

    def _cli(self, args: list[str], timeout: float) -> None:
        with open(self.log_path, "ab") as log:
            try:
                rc = subprocess.run(
                    self._command(*args),
                    check=False,
                    env=self._env(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                ).returncode
            except subprocess.TimeoutExpired:
                rc = -1
        if rc != 0:
            raise ConfigError(
                f"`jsipfs {' '.join(args)}` failed for the repo {self.repo}: see {self.log_path}, "
                "or delete the repo folder to start afresh.\n" + _tail(self.log_path)
            )

    def _write_config(self) -> str:
        """Set addresses and routing in the repo's JSON config; return the node's peer ID.

        One file write instead of five ``jsipfs config`` runs of ~1 s each.
        """
        path = self.repo / "config"
        config = json.loads(path.read_text())
        addresses = config.setdefault("Addresses", {})
        addresses["Swarm"] = []  # offline devnet: no peer ports at all
        addresses["API"] = f"/ip4/127.0.0.1/tcp/{self.api_port}"
        addresses["Gateway"] = f"/ip4/127.0.0.1/tcp/{self.gateway_port}"
        # The default gRPC port 5003 is fixed: two nodes on one machine would collide on it.
        addresses.pop("RPC", None)
        config["Bootstrap"] = []
        config.setdefault("Routing", {})["Type"] = "none"
        tmp = path.with_name("config.tmp")
        tmp.write_text(json.dumps(config, indent=2))
        os.replace(tmp, path)
        return str(config.get("Identity", {}).get("PeerID", ""))

    def _wait_ready(self, deadline: float, timeout: float, peer_id: str) -> None:
        """Poll ``/api/v0/id`` until our daemon answers (its peer ID, not some other node's)."""
        # Never through a proxy: the node is on localhost.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        url = f"{self.api_url}/api/v0/id"
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                rc = self._proc.returncode
                self.stop()
                raise NetworkUnreachable(
                    f"The js-ipfs daemon exited with code {rc} while starting: see {self.log_path}.\n"
                    + _tail(self.log_path)
                )
            try:
                with opener.open(urllib.request.Request(url, data=b"", method="POST"), timeout=2) as resp:
                    if resp.status == 200 and json.loads(resp.read()).get("ID") in (peer_id, None, ""):
                        return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise NetworkUnreachable(
                    f"The js-ipfs daemon did not answer on {self.api_url} within {timeout:g} s: see {self.log_path}, "
                    "or start it with a longer timeout."
                )
            time.sleep(0.1)

    def _stop_leftover(self, timeout: float = 10.0) -> None:
        """Stop a daemon an earlier process started on this repo, and clear its stale lock.

        A killed daemon leaves ``repo.lock`` behind, which js-ipfs honours for
        20 s; we own the repo, so once no daemon runs the lock is ours to drop.
        """
        try:
            pid = int(self._pid_file.read_text().strip())
        except (OSError, ValueError):
            pid = None
        if pid is not None and _is_our_daemon(pid, self.repo):
            signal_group(pid, signal.SIGTERM)
            end = time.monotonic() + timeout
            while _is_our_daemon(pid, self.repo) and time.monotonic() < end:
                time.sleep(0.1)
            if _is_our_daemon(pid, self.repo):
                signal_group(pid, signal.SIGKILL)
        for name in ("repo.lock", "api"):
            target = self.repo / name
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    target.unlink()


def _is_our_daemon(pid: int, repo: Path) -> bool:
    """True only for a live daemon leading its own group in ``repo``, so a recycled pid is never killed.

    js-ipfs renames its process to ``ipfs``, so the command line cannot tell;
    its working directory (set by ``start``) can.
    """
    try:
        return os.getpgid(pid) == pid and Path(os.readlink(f"/proc/{pid}/cwd")) == repo
    except OSError:
        return False


def _kill_group(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the process group, wait, then SIGKILL whatever is left of it."""
    signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    # Children the leader started may outlive it; the group id still reaches them.
    signal_group(proc.pid, signal.SIGKILL)
    proc.wait()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


if __name__ == "__main__":
    # `python -m decloud_magics.devnet.ipfs_node install [TOOLS_DIR]`: the one-time set-up by hand.
    if sys.argv[1:2] != ["install"] or len(sys.argv) > 3:
        sys.exit("usage: python -m decloud_magics.devnet.ipfs_node install [TOOLS_DIR]")
    try:
        print(ensure_ipfs_installed(Path(sys.argv[2]) if len(sys.argv) > 2 else default_tools_dir()))
    except ConfigError as exc:
        sys.exit(str(exc))
