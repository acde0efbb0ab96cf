"""The live channel's messages on the wire: their topic, their envelope, their size limits.

One topic per market contract, ``decloud/<chain id>/<contract>/live``; one small
JSON object per message: ``{"v": 1, "task": 7, "kind": "stdout", "data": {...}}``.

Anyone who reaches the topic can publish anything, so a received message is
untrusted input: size-capped, checked for shape, reduced to a flat dict of
plain values, used for nothing but what a panel shows; one that names a worker
must carry that worker's signature (``channel_signing.py``).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

from .untrusted import loads_json

__all__ = [
    "MAX_MESSAGE_BYTES",
    "VERSION",
    "decode_message",
    "encode_message",
    "market_topic",
    "multibase_decode",
    "multibase_encode",
]

VERSION = 1
MAX_MESSAGE_BYTES = 16 * 1024  # a panel line, not a payload
_MAX_KIND = 32
_MAX_KEYS = 16


def market_topic(chain_id: int, contract: str) -> str:
    """The topic where every worker and client of one contract meets."""
    return f"decloud/{int(chain_id)}/{contract.lower()}/live"


def multibase_encode(raw: bytes) -> str:
    """``u`` + unpadded base64url: how the Kubo RPC API spells topics and data."""
    return "u" + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def multibase_decode(text: str) -> bytes:
    """The bytes of a ``u`` (base64url) multibase string; ValueError for anything else."""
    if not text.startswith("u") or "+" in text or "/" in text:
        raise ValueError("not a base64url multibase string")
    try:
        padded = (text[1:] + "=" * (-len(text[1:]) % 4)).encode("ascii")
        return base64.b64decode(padded, altchars=b"-_", validate=True)  # strict: no skipped characters
    except binascii.Error as exc:
        raise ValueError(str(exc)) from None


def encode_message(
    task_id: int, kind: str, data: dict[str, Any], max_bytes: int = MAX_MESSAGE_BYTES
) -> bytes | None:
    """The wire form of one message; long strings are cut to fit, None if it still does not."""
    envelope = {"v": VERSION, "task": int(task_id), "kind": str(kind), "data": dict(data)}
    body = json.dumps(envelope, separators=(",", ":"), default=str).encode()
    limit = max_bytes
    while len(body) > max_bytes and limit > 64:
        limit //= 2  # a long stdout line is cut rather than lost: the panel shows its start
        cut = {k: v[:limit] + "…" if isinstance(v, str) and len(v) > limit else v for k, v in data.items()}
        body = json.dumps({**envelope, "data": cut}, separators=(",", ":"), default=str).encode()
    return body if len(body) <= max_bytes else None


def decode_message(raw: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> tuple[int, str, dict[str, Any]] | None:
    """``(task, kind, data)`` from untrusted bytes, or None for anything that is not a message of ours.

    ``data`` keeps only string keys with plain values (strings, integers,
    finite floats, booleans, null): it is shown and recorded, so it must not
    carry structures a viewer would have to walk.
    """
    if len(raw) > max_bytes:
        return None
    try:
        msg = loads_json(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(msg, dict) or msg.get("v") != VERSION:
        return None
    task, kind, data = msg.get("task"), msg.get("kind"), msg.get("data")
    if isinstance(task, bool) or not isinstance(task, int) or not 0 <= task < 2**256:
        return None
    if not isinstance(kind, str) or not 0 < len(kind) <= _MAX_KIND or not isinstance(data, dict):
        return None
    plain = {
        k: v
        for k, v in list(data.items())[:_MAX_KEYS]
        if isinstance(k, str)
        and (v is None or isinstance(v, (str, int, bool)) or (isinstance(v, float) and math.isfinite(v)))
    }
    return task, kind, plain
