"""A real js-ipfs node for one test module, or a loud skip saying how to install it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from decloud_magics.devnet.ipfs_node import IpfsNode, install_command, install_hint, ipfs_installed

ROOT = Path(__file__).resolve().parents[1]
TOOLS = Path(os.environ.get("DECLOUD_TOOLS") or ROOT / ".tools")


def running_node(repo: Path, what: str) -> Iterator[IpfsNode]:
    """Start a node on ports the OS picks (never another module's); ``what`` names the tests skipped."""
    if not ipfs_installed(TOOLS):
        pytest.skip(
            f"JS-IPFS IS NOT INSTALLED in {TOOLS}: the {what} did NOT run. Install it once "
            f"(about 3 minutes, runs `{' '.join(install_command(TOOLS))}`) with: {install_hint(TOOLS)}  "
            "(set DECLOUD_TOOLS to use another folder)."
        )
    node = IpfsNode(repo, tools_dir=TOOLS)
    node.start(timeout=120)
    try:
        yield node
    finally:
        node.stop()
