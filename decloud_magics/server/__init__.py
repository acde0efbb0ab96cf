"""Jupyter server glue: REST handlers over the run ledger for the JupyterLab side panel.

Enabled by ``etc/jupyter/jupyter_server_config.d/decloud_magics.json``, which
the package installs. Knows the ledger only; never imports IPython or widgets.
"""

from __future__ import annotations

from typing import Any

__all__ = ["_jupyter_server_extension_points"]


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    """Where jupyter_server finds the extension; the app class is imported only then."""
    from .app import DecloudServerApp

    return [{"module": "decloud_magics.server", "app": DecloudServerApp}]
