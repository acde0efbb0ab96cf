"""decloud: run notebook cells on a decentralized compute market and watch them run.

``%load_ext decloud_magics`` registers ``%%decloud``; ``decloud_magics.Client``
is the same thing as a Python API. Heavy parts (web3, pandas) load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from .client import Client
    from .run import Result, Run

__all__ = ["Client", "Result", "Run", "__version__", "load_ipython_extension", "unload_ipython_extension"]


def __getattr__(name: str) -> Any:
    # Lazy: `import decloud_magics` must not pay for web3 and pandas.
    if name == "Client":
        from .client import Client

        return Client
    if name in ("Run", "Result"):
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module 'decloud_magics' has no attribute {name!r}")


def load_ipython_extension(ipython: InteractiveShell) -> None:
    """``%load_ext decloud_magics``: register the magics; nothing connects until first use."""
    from .magics import DecloudMagics

    magics = DecloudMagics(ipython)
    ipython.register_magics(magics)
    if magics not in ipython.configurables:
        ipython.configurables.append(magics)
    magics.on_load()


def unload_ipython_extension(ipython: InteractiveShell) -> None:
    from .magics import DecloudMagics

    for item in list(ipython.configurables):
        if isinstance(item, DecloudMagics):
            item.on_unload()
            ipython.configurables.remove(item)
