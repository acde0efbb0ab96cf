"""Where decloud keeps its files: one home folder, overridable with DECLOUD_HOME."""

from __future__ import annotations

import os
from pathlib import Path


def decloud_home() -> Path:
    """The folder for the ledger, the local store and network configs.

    ``DECLOUD_HOME`` wins; otherwise a ``decloud`` folder in the Jupyter data
    dir, so the ledger sits beside the user's other Jupyter state.
    """
    override = os.environ.get("DECLOUD_HOME")
    if override:
        home = Path(override).expanduser()
    else:
        try:
            from jupyter_core.paths import jupyter_data_dir

            home = Path(jupyter_data_dir()) / "decloud"
        except ImportError:  # jupyter_core is a dependency, but the worker may run without it
            home = Path.home() / ".local" / "share" / "decloud"
    home.mkdir(parents=True, exist_ok=True)
    return home
