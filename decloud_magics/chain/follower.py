"""Watching the market change: a node-side log filter that returns only what is new, and a bounded wait."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from .records import MarketEvent

if TYPE_CHECKING:
    from .market import Market


class EventFollower:
    """Follows the contract's logs with a node-side filter: each poll returns only new logs."""

    def __init__(self, market: Market, from_block: int | str = "latest") -> None:
        self.market = market
        with market.guard():
            self._filter = market.w3.eth.filter(cast(Any, {"address": market.address, "fromBlock": from_block}))

    def poll(self) -> list[MarketEvent]:
        with self.market.guard():
            rpc = self.market.rpc
            logs = self._filter.get_new_entries() if rpc is None else rpc.new_logs(str(self._filter.filter_id))
        return self.market.decode_logs(list(logs))

    def close(self) -> None:
        with contextlib.suppress(Exception), self.market.guard():
            self.market.w3.eth.uninstall_filter(cast(Any, self._filter.filter_id))


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass; every wait here has a limit."""
    end = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(interval)
