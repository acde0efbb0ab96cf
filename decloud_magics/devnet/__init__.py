"""Real parts on this machine for the ``devnet`` network: a chain node (anvil), an IPFS node
(js-ipfs or the user's Kubo) and worker processes.

Names are loaded on first use, so ``python -m decloud_magics.devnet.ipfs_node``
does not import its own module twice.
"""

from __future__ import annotations

from typing import Any

__all__ = ["IpfsNode", "default_tools_dir", "ensure_ipfs_installed", "ipfs_installed"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import ipfs_node

        return getattr(ipfs_node, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
