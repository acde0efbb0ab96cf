"""New-block notices pushed by the chain node over WebSocket: look at the chain as a block is mined.

Clients and workers read the chain through node-side log filters, polled every
50 ms and whenever a live-channel hint arrives. A node that also speaks
WebSocket (anvil and geth serve it on their HTTP port) pushes each new block's
header the moment it is mined (``eth_subscribe("newHeads")``); waking the
follower then replaces the rest of a poll interval, or the hint's trip through
IPFS pubsub (about 20 ms here), by about a millisecond. It is only a nudge:
the filters still say what happened, and where the endpoint has no WebSocket
(an HTTP-only provider) the watcher stops after its first refusal and polling
goes on as before.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Seconds between reconnection attempts after a connection that worked was lost.
RETRY_S = (0.5, 1.0, 2.0, 5.0)


def ws_url(rpc_url: str) -> str | None:
    """The WebSocket URL a node serves beside ``rpc_url`` (same host, port and path), or None."""
    for http, ws in (("http://", "ws://"), ("https://", "wss://"), ("ws://", "ws://"), ("wss://", "wss://")):
        if rpc_url.startswith(http):
            return ws + rpc_url[len(http) :]
    return None


class HeadWatcher:
    """Calls ``on_block()`` for each new block the node announces, from a thread of its own."""

    def __init__(self, rpc_url: str, on_block: Callable[[], None], *, open_timeout: float = 3.0) -> None:
        self.url = ws_url(rpc_url)
        self.on_block = on_block
        self.open_timeout = open_timeout
        self.blocks = 0  # notices received, for tests and logs
        self.subscribed = threading.Event()
        self.gave_up = threading.Event()  # the endpoint has no WebSocket: polling alone serves
        self._closed = threading.Event()
        self._socket: object | None = None
        self._thread = threading.Thread(target=self._run, name="decloud-chain-heads", daemon=True)

    def start(self) -> HeadWatcher:
        if self.url is None:
            self.gave_up.set()
        else:
            self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()
        sock = self._socket
        if sock is not None:
            with contextlib.suppress(Exception):  # already closed or broken: either way it is done
                sock.close()  # type: ignore[attr-defined]
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        from websockets.exceptions import InvalidHandshake, InvalidURI
        from websockets.sync.client import connect

        url = self.url
        if url is None:
            return
        attempt = 0
        worked = False
        while not self._closed.is_set():
            try:
                with connect(url, open_timeout=self.open_timeout, close_timeout=1) as sock:
                    self._socket = sock
                    sock.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe",
                                          "params": ["newHeads"]}))  # fmt: skip
                    answer = json.loads(sock.recv(timeout=self.open_timeout))
                    if "error" in answer or not answer.get("result"):
                        log.debug("chain heads: %s refused newHeads: %s", url, answer.get("error"))
                        self.gave_up.set()
                        return
                    worked, attempt = True, 0
                    self.subscribed.set()
                    for _message in sock:
                        self.blocks += 1
                        self.on_block()
            except (InvalidHandshake, InvalidURI) as exc:
                if not worked:  # an HTTP-only endpoint: nothing to watch
                    log.debug("chain heads: %s speaks no WebSocket (%s); polling alone", url, exc)
                    self.gave_up.set()
                    return
            except Exception as exc:  # noqa: BLE001 (a node restarting, a dropped connection: try again)
                if not worked and attempt == 0:
                    log.debug("chain heads: cannot reach %s (%s); will retry", url, exc)
            finally:
                self._socket = None
                self.subscribed.clear()
            if self._closed.wait(RETRY_S[min(attempt, len(RETRY_S) - 1)]):
                return
            attempt += 1
