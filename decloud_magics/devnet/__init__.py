"""Real parts on this machine for the ``devnet`` network: an IPFS node (and, later, a chain node)."""

from __future__ import annotations

from .ipfs_node import IpfsNode, default_tools_dir, ensure_ipfs_installed, ipfs_installed

__all__ = ["IpfsNode", "default_tools_dir", "ensure_ipfs_installed", "ipfs_installed"]
