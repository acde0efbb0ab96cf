"""Thin JSON handlers: parse the request, ask the reader, answer or map the error.

Ledger reads run on a worker thread: a long history's summary takes a moment,
and the server's event loop also carries every kernel's messages.
"""

from __future__ import annotations

import asyncio
import json
from http.client import responses
from typing import TYPE_CHECKING, Any

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin

from ..errors import DecloudError, UsageError
from .models import RunsQuery

if TYPE_CHECKING:
    from .app import DecloudServerApp
    from .reader import LedgerReader

__all__ = ["RUN_ID_PATTERN", "RunHandler", "RunsHandler", "SummaryHandler"]

#: Run ids are short lowercase hex; anything without a slash is looked up and may 404.
RUN_ID_PATTERN = r"(?P<run_id>[^/]+)"


class _LedgerHandler(ExtensionHandlerMixin, APIHandler):
    """Shared plumbing: the reader, and errors as ``{"message": ...}`` JSON."""

    @property
    def reader(self) -> LedgerReader:
        app: DecloudServerApp = self.extensionapp  # type: ignore[assignment]
        return app.reader

    def reply(self, payload: Any) -> None:
        self.set_header("Cache-Control", "no-store")  # the panel polls: never show a stale list
        self.finish(json.dumps(payload))

    def fail(self, status: int, message: str) -> None:
        """Answer an error ourselves: tornado's HTTPError would treat a '%' in the text as a format."""
        self.set_status(status)
        self.finish(json.dumps({"message": message, "reason": responses.get(status, "")}))

    async def answer(self, read: Any, *args: Any) -> None:
        try:
            payload = await asyncio.to_thread(read, *args)
        except DecloudError as exc:
            self.log.error("decloud: %s", exc)
            self.fail(500, str(exc))
            return
        self.reply(payload)


class RunsHandler(_LedgerHandler):
    """``GET /decloud/runs?network=&status=&limit=``: the newest runs first."""

    @tornado.web.authenticated
    async def get(self) -> None:
        arguments = {name: self.get_query_arguments(name) for name in self.request.query_arguments}
        try:
            query = RunsQuery.from_arguments(arguments)
        except UsageError as exc:
            self.fail(400, str(exc))
            return
        await self.answer(self.reader.runs, query)


class RunHandler(_LedgerHandler):
    """``GET /decloud/runs/<run_id>``: one run and its events."""

    @tornado.web.authenticated
    async def get(self, run_id: str) -> None:
        try:
            detail = await asyncio.to_thread(self.reader.run, run_id)
        except DecloudError as exc:
            self.log.error("decloud: %s", exc)
            self.fail(500, str(exc))
            return
        if detail is None:
            self.fail(404, f"There is no run '{run_id}' in the ledger: list the runs with GET /decloud/runs.")
            return
        self.reply(detail)


class SummaryHandler(_LedgerHandler):
    """``GET /decloud/summary``: counts by status and spending per network."""

    @tornado.web.authenticated
    async def get(self) -> None:
        await self.answer(self.reader.summary)
