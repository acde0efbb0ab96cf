"""The jupyter_server extension that serves the ledger to the side panel."""

from __future__ import annotations

from pathlib import Path

from jupyter_server.extension.application import ExtensionApp
from traitlets import Unicode

from ..paths import decloud_home
from .handlers import RUN_ID_PATTERN, RunHandler, RunsHandler, SummaryHandler
from .reader import LedgerReader

__all__ = ["DecloudServerApp"]


class DecloudServerApp(ExtensionApp):
    """Adds ``/decloud/runs``, ``/decloud/runs/<id>`` and ``/decloud/summary`` to the server."""

    name = "decloud_magics"
    load_other_extensions = True

    ledger_path = Unicode(
        "",
        config=True,
        help="The ledger file to read; empty means ledger.sqlite in DECLOUD_HOME, where kernels write it.",
    )

    reader: LedgerReader

    def initialize_settings(self) -> None:
        path = Path(self.ledger_path) if self.ledger_path else decloud_home() / "ledger.sqlite"
        self.reader = LedgerReader(path)
        self.log.info("decloud: serving the run ledger %s (read-only)", path)

    def initialize_handlers(self) -> None:
        self.handlers.extend(
            [
                (r"decloud/runs", RunsHandler),
                (rf"decloud/runs/{RUN_ID_PATTERN}", RunHandler),
                (r"decloud/summary", SummaryHandler),
            ]
        )
