"""A private devnet for one test module: its own DECLOUD_HOME and ports the OS picks.

Install the tools once or skip loudly, ``Devnet.up``, ``down`` and restore the
environment. By default the chain and the IPFS node take ports the OS picks, so
devnets of several test modules and other IPFS nodes can run at once.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from decloud_magics.devnet import chain_node
from decloud_magics.devnet.ipfs_node import ensure_ipfs_installed, install_hint
from decloud_magics.devnet.manager import Devnet
from decloud_magics.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TOOLS = Path(os.environ.get("DECLOUD_TOOLS") or ROOT / ".tools").absolute()


def install_or_skip(tools: Path = TOOLS) -> None:
    """Install anvil and js-ipfs once; skip, naming what failed and the fixing command, when npm cannot."""
    for what, install, command in (
        ("anvil (the chain node)", chain_node.ensure_anvil_installed,
         " ".join(chain_node.anvil_install_command(tools))),
        ("js-ipfs (the IPFS node)", ensure_ipfs_installed, install_hint(tools)),
    ):  # fmt: skip
        try:
            install(tools, lambda msg: print(msg, file=sys.stderr))
        except ConfigError as exc:
            pytest.skip(
                f"DEVNET TESTS DID NOT RUN: installing {what} into {tools} failed: {exc}\n"
                f"Fix that, then install it with: {command}   (or DECLOUD_TOOLS={tools} decloud devnet up)"
            )


@contextlib.contextmanager
def private_devnet(home: Path, workers: int, tools: Path = TOOLS, pick_ports: bool = True) -> Iterator[Devnet]:
    """A running devnet in ``home`` with ``workers`` workers; everything stops on exit.

    ``pick_ports`` takes ports the OS picks, so several devnets can run at once;
    without it the devnet prefers the default ports, as a user's does.
    """
    saved = {name: os.environ.get(name) for name in ("DECLOUD_HOME", "DECLOUD_TOOLS")}
    os.environ["DECLOUD_HOME"] = str(home)
    os.environ["DECLOUD_TOOLS"] = str(tools)
    net: Devnet | None = None
    try:
        install_or_skip(tools)
        net = Devnet(tools)
        if pick_ports:
            net.up(workers=workers, chain_port=chain_node.pick_port(0), ipfs_port=chain_node.pick_port(0))
        else:
            net.up(workers=workers)
        yield net
    finally:
        if net is not None:
            net.down(grace=5)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def requester_client(devnet: Devnet) -> Iterator[object]:
    """A ``Client`` on the devnet with the notebook account's key, as a user's kernel has."""
    from decloud_magics import Client
    from decloud_magics.keys import load_key_file

    client = Client("devnet", key=load_key_file(devnet.requester_key_file()))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def anvil(tmp_path_factory: pytest.TempPathFactory) -> Iterator[chain_node.AnvilNode]:
    """A bare anvil for one test module (no contract, no IPFS); skips loudly where it cannot install."""
    try:
        chain_node.ensure_anvil_installed(TOOLS)
    except Exception as exc:  # noqa: BLE001 (any install failure: skip loudly, naming it)
        pytest.skip(f"ANVIL IS NOT INSTALLED ({exc}): tests that need a chain node did not run")
    node = chain_node.AnvilNode(
        TOOLS, tmp_path_factory.mktemp("anvil") / "anvil.log", port=chain_node.pick_port(0)
    )
    node.start()
    yield node
    node.stop()
