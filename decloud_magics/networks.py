"""Named networks: where the chain, the contract and the content store are.

The file holds no secrets: keys come from ``keys.py``. ``local`` is built in and
embedded; ``devnet`` is written by ``decloud devnet up``; users add others.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ConfigError, UsageError
from .paths import decloud_home

EMBEDDED = "embedded"
RPC = "rpc"

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,40}$")


@dataclass(frozen=True)
class NetworkConfig:
    """Everything needed to reach one market. Safe to print and to save."""

    name: str
    kind: str = RPC
    rpc_url: str | None = None
    contract: str | None = None
    ipfs_api: str | None = None
    chain_id: int | None = None
    symbol: str = "ETH"
    description: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def is_embedded(self) -> bool:
        return self.kind == EMBEDDED


LOCAL = NetworkConfig(
    name="local",
    kind=EMBEDDED,
    description="in-process EVM, on-disk blockstore and in-process workers; nothing to set up",
)


def networks_file() -> Path:
    return decloud_home() / "networks.json"


def _read_saved(path: Path) -> dict[str, NetworkConfig]:
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"The network file {path} is not valid JSON ({exc}); fix or delete it.") from None
    saved: dict[str, NetworkConfig] = {}
    for name, entry in raw.items():
        entry = {k: v for k, v in entry.items() if k in NetworkConfig.__dataclass_fields__}
        entry["name"] = name
        saved[name] = NetworkConfig(**entry)
    return saved


def list_networks() -> dict[str, NetworkConfig]:
    """Every known network, built-in first; a saved ``devnet`` comes from ``devnet up``."""
    known = {"local": LOCAL}
    known.update(_read_saved(networks_file()))
    return known


def get_network(name: str) -> NetworkConfig:
    known = list_networks()
    if name in known:
        return known[name]
    if name == "devnet":
        raise ConfigError(
            "The devnet is not set up: run `decloud devnet up` in a terminal first, then use it here."
        )
    names = ", ".join(sorted(known))
    raise UsageError(
        f"Unknown network '{name}': known networks are {names}; "
        "add one with `%decloud network add NAME --rpc URL --contract ADDR --ipfs-api URL`."
    )


def save_network(config: NetworkConfig) -> Path:
    """Save (or replace) a network by name. Refuses the built-in ``local``."""
    if config.name == "local":
        raise UsageError("'local' is built in and cannot be replaced: choose another name.")
    if not _NAME.match(config.name):
        raise UsageError(
            f"'{config.name}' is not a usable network name: use letters, digits, '-', '_' or '.', "
            "starting with a letter."
        )
    if config.kind == RPC and not (config.rpc_url and config.contract and config.ipfs_api):
        raise UsageError("A network needs --rpc URL, --contract ADDR and --ipfs-api URL.")
    path = networks_file()
    raw = json.loads(path.read_text()) if path.exists() else {}
    entry = {k: v for k, v in asdict(config).items() if k != "name" and v not in (None, "", {})}
    raw[config.name] = entry
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def remove_network(name: str) -> None:
    path = networks_file()
    raw = json.loads(path.read_text()) if path.exists() else {}
    if name not in raw:
        raise UsageError(f"No saved network named '{name}'.")
    del raw[name]
    path.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
