"""What the live channel makes of an IPFS node's HTTP responses.

The lines of a streamed subscription, a reader woken from one, the node's own
error sentence, and a short cause when no response came at all.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import requests

__all__ = ["describe", "interrupt", "lines", "node_message"]


def lines(chunks: Iterable[bytes], cap: int) -> Iterator[bytes | None]:
    """The lines of a stream; None stands for a line longer than ``cap``, which is never held whole."""
    buf, skipping = b"", False
    for chunk in chunks:
        *whole, buf = (buf + chunk).split(b"\n")
        for line in whole:
            if skipping:
                skipping = False
                yield None
            elif line.strip():
                yield line if len(line) <= cap else None
        if len(buf) > cap:
            buf, skipping = b"", True


def interrupt(resp: requests.Response) -> None:
    """Wake a reader blocked on ``resp``: closing does not wake a ``recv``, a socket shutdown does.

    urllib3 >= 2.3 offers that as ``shutdown()``; before, the socket is reached through http.client.
    """
    raw = resp.raw
    with contextlib.suppress(Exception):
        if callable(getattr(raw, "shutdown", None)):
            raw.shutdown()
        else:
            raw._fp.fp.raw._sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(Exception):
        resp.close()


def node_message(resp: requests.Response) -> str:
    """The node's own error sentence (cut to 200 characters), else the HTTP reason."""
    with contextlib.suppress(ValueError):
        payload = resp.json()
        if isinstance(payload, dict) and isinstance(payload.get("Message"), str):
            return payload["Message"][:200]
    return resp.reason or "no message"


def describe(exc: BaseException) -> str:
    """A short cause for a log line: requests' own messages run to hundreds of characters."""
    return type(exc).__name__ if len(str(exc)) > 160 else f"{type(exc).__name__}: {exc}"
