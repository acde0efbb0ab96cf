"""Shared fixtures: a private DECLOUD_HOME, the embedded network, a real IPython shell."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Every test session gets its own home: ledger, blockstore and networks never touch the user's.
_HOME = Path(tempfile.mkdtemp(prefix="decloud-test-home-"))
os.environ["DECLOUD_HOME"] = str(_HOME)
os.environ.pop("DECLOUD_PRIVATE_KEY", None)


@pytest.fixture(scope="session")
def decloud_home() -> Path:
    return _HOME


@pytest.fixture(scope="session")
def client() -> Iterator[object]:
    """One client on the embedded network, shared: the chain and workers start once."""
    from decloud_magics import Client

    c = Client("local")
    yield c
    c.close()


@pytest.fixture(scope="session")
def shell() -> Iterator[object]:
    """A real InteractiveShell with the extension loaded, as a notebook kernel has."""
    from IPython.core.interactiveshell import InteractiveShell

    sh = InteractiveShell.instance()
    sh.run_line_magic("load_ext", "decloud_magics")
    yield sh
    sh.run_line_magic("unload_ext", "decloud_magics")


@pytest.fixture
def run_cell(shell):  # type: ignore[no-untyped-def]
    """Run a cell and return (ExecutionResult, captured output) like a notebook would show."""
    from IPython.utils.capture import capture_output

    def _run(code: str):  # type: ignore[no-untyped-def]
        with capture_output() as captured:
            result = shell.run_cell(code, store_history=True)
        return result, captured

    return _run
