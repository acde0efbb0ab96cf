"""The container that task and result packages share: framing, manifest and blobs.

The layout::

    b"DCLD" + version byte + 4-byte big-endian manifest length
    + manifest (JSON, sorted keys, compact, UTF-8)
    + blobs (concatenated; the manifest gives each one's offset and length)
    [+ results only: 4-byte length + JSON trailer with timings]

Blobs carry no hashes of their own (format 1 had a sha256 per blob): a
package only ever reaches a decoder through a check that already covers all
of its bytes, the store's CID check on read or the chain's ``result_digest``,
so a second hash of every blob would double the cost of a large value and
catch nothing. Format 1 packages are still read, and their blob hashes
checked unless ``verify=False``.

Parsing assumes hostile bytes: every length is bounds-checked and every
field type-checked.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from .buffers import join
from .codecs import MB, BytesLike
from .errors import IntegrityError, SerializationError
from .untrusted import loads_json

FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
MAGIC = b"DCLD"
_PREFIX = 9  # magic, version, manifest length
_MAX_MANIFEST = 64 * MB


def layout(
    manifest: dict[str, Any],
    blobs: Sequence[tuple[dict[str, Any], Sequence[BytesLike]]],
    trailer: dict[str, Any] | None = None,
) -> tuple[list[BytesLike], int, list[dict[str, Any]]]:
    """The package as pieces end to end, where its first blob starts, and the blobs' entries."""
    entries, offset = [], 0
    for entry, pieces in blobs:
        size = sum(memoryview(p).nbytes for p in pieces)
        entries.append({**entry, "offset": offset, "length": size})
        offset += size
    head = _json_bytes({**manifest, "format": FORMAT_VERSION, "blobs": entries})
    parts: list[BytesLike] = [MAGIC, bytes([FORMAT_VERSION]), len(head).to_bytes(4, "big"), head]
    for _entry, pieces in blobs:
        parts += pieces
    if trailer is not None:
        tail = _json_bytes(trailer)
        parts += [len(tail).to_bytes(4, "big"), tail]
    return parts, _PREFIX + len(head), entries


def pack(
    manifest: dict[str, Any],
    blobs: Sequence[tuple[dict[str, Any], Sequence[BytesLike]]],
    trailer: dict[str, Any] | None = None,
) -> tuple[bytes | memoryview, list[memoryview]]:
    """The package in one buffer, and a read-only view of each blob inside it.

    A large package is a read-only view of a fresh mapping rather than
    ``bytes`` (see ``buffers``): every consumer takes any bytes-like object.
    """
    parts, start, entries = layout(manifest, blobs, trailer)
    data = join(parts)  # the one copy of every blob, straight from the value's memory
    view = memoryview(data)
    return data, [view[start + e["offset"] : start + e["offset"] + e["length"]] for e in entries]


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def unpack(
    data: BytesLike, kind: str, verify: bool = True
) -> tuple[dict[str, Any], list[tuple[dict[str, Any], memoryview]], dict[str, Any] | None, int]:
    """A ``kind`` package's manifest, its blobs as read-only views, its trailer, and where its body ends."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SerializationError(f"A {kind} package must be bytes, not {type(data).__name__}.")
    view = memoryview(data).cast("B").toreadonly()  # values are handed out as slices of it: no copies
    if len(view) < _PREFIX or bytes(view[:4]) != MAGIC:
        raise IntegrityError(
            f"These bytes are not a decloud {kind} package (the header is missing); the content store returned something else."
        )
    version = view[4]
    if version not in _READABLE_VERSIONS:
        raise SerializationError(
            f"This {kind} package uses format version {version}, which this decloud_magics cannot read; upgrade decloud_magics."
        )
    length = int.from_bytes(view[5:9], "big")
    if length > _MAX_MANIFEST or _PREFIX + length > len(view):
        raise damaged(kind, "its manifest length points past the end")
    try:
        manifest = loads_json(view[_PREFIX : _PREFIX + length])
    except (ValueError, RecursionError):
        raise damaged(kind, "its manifest is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != kind or manifest.get("format") != version:
        raise damaged(kind, f"it is not a {kind} manifest")
    start = _PREFIX + length
    blobs, expected = [], 0
    for entry in get_field(manifest, "blobs", list, kind):
        if not isinstance(entry, dict):
            raise damaged(kind, "a blob entry is not an object")
        offset, size, digest = entry.get("offset"), entry.get("length"), entry.get("sha256")
        if (
            type(offset) is not int
            or type(size) is not int
            or offset != expected
            or size < 0
            or (version == 1 and not isinstance(digest, str))
        ):
            raise damaged(kind, "its blob table is inconsistent")
        expected += size
        if start + expected > len(view):
            raise damaged(kind, "it is truncated")
        blob = view[start + offset : start + offset + size]
        if version == 1 and verify and hashlib.sha256(blob).hexdigest() != digest:
            raise IntegrityError(
                f"The {kind} package is corrupted: its blob {str(entry.get('name', entry.get('role')))[:40]!r} does not match its sha256; "
                "fetch it again."
            )
        blobs.append((entry, blob))
    end = start + expected
    trailer = None
    if end < len(view):
        if kind != "result" or end + 4 > len(view):
            raise damaged(kind, "it has unexpected bytes after its blobs")
        tail_len = int.from_bytes(view[end : end + 4], "big")
        if end + 4 + tail_len != len(view):
            raise damaged(kind, "its trailer length is wrong")
        try:
            trailer = loads_json(view[end + 4 :])
        except (ValueError, RecursionError):
            raise damaged(kind, "its trailer is not valid JSON") from None
        if not isinstance(trailer, dict):
            raise damaged(kind, "its trailer is not an object")
    return manifest, blobs, trailer, end


def damaged(kind: str, why: str) -> IntegrityError:
    """The error for a package whose bytes are malformed, saying ``why``."""
    return IntegrityError(f"The {kind} package is damaged: {why}; fetch it again or rerun the cell.")


def get_field(obj: dict[str, Any], key: str, types_: type | tuple[type, ...], kind: str) -> Any:
    """``obj[key]``, checked to be one of ``types_`` (a bool is not an int); the package is damaged otherwise."""
    value = obj.get(key)
    if not isinstance(value, types_) or (isinstance(value, bool) and types_ is int):
        raise damaged(kind, f"its field '{key}' is missing or has the wrong type")
    return value
