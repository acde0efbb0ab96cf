"""Install and run the devnet's chain node (anvil), and put TaskMarket and funds on it.

anvil comes from npm (``@foundry-rs/anvil``) with its binary inside a
per-platform package, so nothing is downloaded from outside the registry, and
it starts in about 0.1 s. It is installed into ``<tools>/anvil`` — its own npm
prefix beside js-ipfs, because an ``npm install`` into the js-ipfs prefix
re-resolves its ~1000 packages (a minute) for a 2-package addition.

The node runs with anvil's default mnemonic, so its first dev account has a
well-known key: we deploy and fund from it. That key is public knowledge and
only ever holds devnet ETH.
"""

from __future__ import annotations

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, NetworkUnreachable
from ..processes import signal_group

ANVIL_VERSION = "1.7.1"
ANVIL_CHAIN_ID = 31337
DEFAULT_PORT = 8545
#: Account 0 of anvil's default mnemonic ("test test ... junk"): published, devnet-only.
DEV_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
_MARKER = ".decloud-anvil-installed"
_INSTALL_TIMEOUT = 600.0

Say = Callable[[str], None]


def _say_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- install -------------------------------------------------------------------


def anvil_prefix(tools_dir: Path) -> Path:
    return Path(tools_dir) / "anvil"


def _platform_package() -> str:
    """anvil's npm package holding the binary for this machine."""
    plat = {"linux": "linux", "darwin": "darwin"}.get(sys.platform)
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower()
    )
    if plat is None or arch is None:
        raise ConfigError(
            f"The devnet chain node (anvil) runs on Linux or macOS (x64/arm64), not "
            f"{sys.platform}/{platform.machine()}: use the local network, or add a network with your own RPC node."
        )
    return f"@foundry-rs/anvil-{plat}-{arch}"


def anvil_binary(tools_dir: Path) -> Path:
    """The native binary; run directly, not through npm's node wrapper, so signals reach anvil itself."""
    return anvil_prefix(tools_dir) / "node_modules" / _platform_package() / "bin" / "anvil"


def anvil_installed(tools_dir: Path) -> bool:
    """Whether a complete install is there (the marker is written only after npm succeeded)."""
    return (anvil_prefix(tools_dir) / _MARKER).is_file() and anvil_binary(tools_dir).is_file()


def anvil_install_command(tools_dir: Path) -> list[str]:
    """The npm command that installs anvil; also what a skip or an error tells the user to run."""
    return [
        "npm", "install", "--prefix", str(anvil_prefix(tools_dir)), "--save-exact", "--no-audit", "--no-fund",
        f"@foundry-rs/anvil@{ANVIL_VERSION}",
    ]  # fmt: skip


def ensure_anvil_installed(tools_dir: Path, progress: Say | None = None) -> Path:
    """Install anvil once (44 MB, a few seconds); return its binary."""
    say = progress or _say_stderr
    if anvil_installed(tools_dir):
        return anvil_binary(tools_dir)
    if shutil.which("npm") is None:
        raise ConfigError(
            "npm was not found on PATH, and the devnet chain node (anvil) is installed with it: "
            "install Node.js 20 or newer with npm, then run this again."
        )
    prefix = anvil_prefix(tools_dir)
    prefix.mkdir(parents=True, exist_ok=True)
    with open(prefix / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two npm runs in one prefix corrupt it
        if anvil_installed(tools_dir):
            return anvil_binary(tools_dir)
        manifest = prefix / "package.json"
        if not manifest.exists():
            # Without a manifest here npm may adopt a package.json in a parent folder.
            manifest.write_text(json.dumps({"name": "decloud-anvil", "private": True}, indent=2) + "\n")
        say(f"npm install @foundry-rs/anvil@{ANVIL_VERSION} into {prefix}")
        log_path = prefix / "npm-install.log"
        cmd = anvil_install_command(tools_dir)
        try:
            with open(log_path, "w") as log:
                rc = subprocess.run(
                    cmd,
                    check=False,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    timeout=_INSTALL_TIMEOUT,
                ).returncode
        except subprocess.TimeoutExpired:
            rc = -1
        if rc != 0 or not anvil_binary(tools_dir).is_file():
            raise ConfigError(
                f"Installing anvil failed (`{' '.join(cmd)}` exited with {rc}): see {log_path}, check access to "
                f"the npm registry, and run it again.\n" + _tail(log_path)
            )
        (prefix / _MARKER).write_text(f"@foundry-rs/anvil@{ANVIL_VERSION}\n")
    return anvil_binary(tools_dir)


# -- JSON-RPC without web3 -------------------------------------------------------

# Never through a proxy: every node of the devnet is on localhost.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def rpc_call(url: str, method: str, params: list[Any] | None = None, timeout: float = 5.0) -> Any:
    """One JSON-RPC call with the standard library: health checks must not cost web3's 1 s import."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with _OPENER.open(request, timeout=timeout) as resp:
            answer = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise NetworkUnreachable(
            f"The chain node at {url} did not answer {method} ({type(exc).__name__}): "
            "start it with `decloud devnet up`."
        ) from None
    if "error" in answer:
        raise NetworkUnreachable(
            f"The chain node at {url} refused {method}: {answer['error'].get('message')}."
        )
    return answer.get("result")


def chain_id(url: str, timeout: float = 2.0) -> int | None:
    """The node's chain id, or None when nothing answers: the health check."""
    try:
        return int(rpc_call(url, "eth_chainId", timeout=timeout), 16)
    except (NetworkUnreachable, TypeError, ValueError):
        return None


def increase_time(url: str, seconds: int) -> int:
    """Move an anvil chain's clock forward and mine a block; return the new block's timestamp.

    Leases and deadlines are judged by block time, so tests let a lease run out
    this way instead of sleeping through it.
    """
    rpc_call(url, "evm_increaseTime", [int(seconds)])
    rpc_call(url, "evm_mine", [])
    return int(rpc_call(url, "eth_getBlockByNumber", ["latest", False])["timestamp"], 16)


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a just-stopped node's TIME_WAIT is fine
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def pick_port(preferred: int) -> int:
    """``preferred`` when free, else one the OS picks: a second devnet or another node must not block us."""
    if preferred and port_is_free(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the node ----------------------------------------------------------------------


class AnvilNode:
    """One anvil process on 127.0.0.1 in its own process group, logging to ``log_path``."""

    def __init__(self, tools_dir: Path, log_path: Path, port: int = 0) -> None:
        self.tools_dir = Path(tools_dir)
        self.log_path = Path(log_path)
        self.port = port or pick_port(DEFAULT_PORT)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self, timeout: float = 30.0) -> float:
        """Start anvil and wait until ``eth_chainId`` answers; return the seconds it took."""
        binary = anvil_binary(self.tools_dir)
        if not binary.is_file():
            raise ConfigError(
                f"anvil is not installed in {anvil_prefix(self.tools_dir)}: run `decloud devnet up`."
            )
        if not port_is_free(self.port):
            raise ConfigError(
                f"Port {self.port} on 127.0.0.1 is taken: stop what listens there, or pick another."
            )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                # --silent: anvil otherwise logs every RPC call, and workers poll many times a second.
                [str(binary), "--host", "127.0.0.1", "--port", str(self.port), "--silent"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group, so a stop reaches all of it
            )
        while chain_id(self.rpc_url, timeout=1.0) is None:
            if self.proc.poll() is not None:
                raise NetworkUnreachable(
                    f"anvil exited with code {self.proc.returncode} while starting: see {self.log_path}.\n"
                    + _tail(self.log_path)
                )
            if time.monotonic() - started > timeout:
                self.stop()
                raise NetworkUnreachable(
                    f"anvil did not answer on {self.rpc_url} within {timeout:g} s: see {self.log_path}."
                )
            time.sleep(0.02)
        return time.monotonic() - started

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None:
            return
        signal_group(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            signal_group(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


# -- contract and funds --------------------------------------------------------------


@dataclass(frozen=True)
class Deployment:
    """What ``deploy_and_fund`` put on the chain, and how long its transactions took."""

    contract: str
    deployer: str
    chain_id: int
    tx_count: int
    seconds: float

    @property
    def tx_latency_s(self) -> float:
        return self.seconds / max(self.tx_count, 1)


def deploy_and_fund(rpc_url: str, grants: dict[str, int], key: str = DEV_KEY) -> Deployment:
    """Deploy TaskMarket and send each address in ``grants`` its wei, signed with a dev key.

    Signed here rather than with ``eth_sendTransaction`` so the same path works
    on any node that holds no unlocked accounts.
    """
    from ..chain.artifact import load_artifact

    w3, sender = _signer(rpc_url, key)
    started = time.monotonic()
    nonce = int(w3.eth.get_transaction_count(sender.address, "pending"))
    artifact = load_artifact()
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    deploy = factory.constructor().build_transaction({"from": sender.address, "nonce": nonce})
    receipts = _send_all(w3, sender, [deploy, *_transfers(w3, sender.address, nonce + 1, grants)])
    return Deployment(
        contract=str(receipts[0]["contractAddress"]),
        deployer=sender.address,
        chain_id=int(w3.eth.chain_id),
        tx_count=len(receipts),
        seconds=time.monotonic() - started,
    )


def fund(rpc_url: str, grants: dict[str, int], key: str = DEV_KEY) -> None:
    """Send each address in ``grants`` its wei (workers added to a running devnet)."""
    w3, sender = _signer(rpc_url, key)
    nonce = int(w3.eth.get_transaction_count(sender.address, "pending"))
    _send_all(w3, sender, _transfers(w3, sender.address, nonce, grants))


def _signer(rpc_url: str, key: str) -> tuple[Any, Any]:
    from eth_account import Account
    from web3 import HTTPProvider, Web3

    return Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": 30})), Account.from_key(key)


def _transfers(w3: Any, sender: str, nonce: int, grants: dict[str, int]) -> list[dict[str, Any]]:
    fee = 2 * int(w3.eth.gas_price)  # room for the base fee to rise while our transactions land
    chain = int(w3.eth.chain_id)
    return [
        {"from": sender, "to": w3.to_checksum_address(address), "value": int(wei), "nonce": nonce + i, "gas": 21000,
         "chainId": chain, "maxFeePerGas": fee, "maxPriorityFeePerGas": 0}
        for i, (address, wei) in enumerate(grants.items())
    ]  # fmt: skip


def _send_all(w3: Any, sender: Any, txs: list[dict[str, Any]]) -> list[Any]:
    """Send every transaction before waiting for any receipt: anvil mines each at once, so one wait, not N."""
    hashes = [w3.eth.send_raw_transaction(sender.sign_transaction(tx).raw_transaction) for tx in txs]
    receipts = [w3.eth.wait_for_transaction_receipt(h, timeout=60, poll_latency=0.01) for h in hashes]
    if any(r["status"] != 1 for r in receipts):
        raise NetworkUnreachable("Setting up the devnet chain failed: one of its transactions was reverted.")
    return receipts


def key_in_file(path: Path) -> str:
    """The key in ``path``, made (mode 0600, never shown) when missing; devnet accounts are disposable.

    Kept across runs, so a worker keeps its address from one ``up`` to the next.
    """
    if path.exists():
        return path.read_text().strip()
    from eth_account import Account

    key = "0x" + bytes(Account.create().key).hex()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key


def address_of(key_hex: str) -> str:
    from eth_account import Account

    return str(Account.from_key(key_hex).address)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
