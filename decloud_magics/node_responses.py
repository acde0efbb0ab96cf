"""Talking HTTP to an IPFS node, for the store and the live channel alike.

The files of a request, the lines of a streamed subscription, a reader woken
from one, the node's own error sentence, and a short cause when no response
came at all.
"""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import requests

__all__ = ["describe", "interrupt", "lines", "multipart_files", "node_error", "node_message"]


def multipart_files(files: Sequence[tuple[str, Sequence[bytes | memoryview]]]) -> tuple[bytes, str]:
    """The body and Content-Type of a request carrying ``(filename, pieces)`` files.

    Named, not numbered: js-ipfs names a file called "0" by its CID instead; and
    each part says its Content-Type, as js-ipfs answers 500 to a part without
    one. One joined body (a single memcpy) beats streaming pieces through
    http.client, which would send a generator in small chunked writes.
    """
    boundary = uuid.uuid4().hex
    body: list[bytes | memoryview] = []
    for name, pieces in files:
        body.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
        )
        body += [*pieces, b"\r\n"]
    body.append(f"--{boundary}--\r\n".encode())
    return b"".join(body), f"multipart/form-data; boundary={boundary}"


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


def node_error(resp: requests.Response) -> str | None:
    """The node's own error sentence, or None if the body is not a node error at all."""
    try:
        payload = resp.json()
    except ValueError:
        return None
    if isinstance(payload, dict) and isinstance(payload.get("Message"), str):
        return str(payload["Message"])
    return None


def node_message(resp: requests.Response) -> str:
    """The node's own error sentence (cut to 200 characters), else the HTTP reason."""
    message = node_error(resp)
    return message[:200] if message is not None else resp.reason or "no message"


def describe(exc: BaseException) -> str:
    """A short cause for a log line: requests' own messages run to hundreds of characters."""
    return type(exc).__name__ if len(str(exc)) > 160 else f"{type(exc).__name__}: {exc}"
