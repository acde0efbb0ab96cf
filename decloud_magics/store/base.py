"""The one interface every content store offers, and the check applied on read.

Stores hand back bytes from places we do not control (a remote IPFS node, a
disk another process writes to), so every ``get`` is checked against the CID
before the bytes reach the package decoder.
"""

from __future__ import annotations

import hashlib
from typing import Protocol, runtime_checkable

from ..errors import IntegrityError, StoreError
from .cid import DAG_PB, IDENTITY, RAW, SHA2_256, SHA2_512, parse_cid

_HASHERS = {SHA2_256: "sha256", SHA2_512: "sha512"}


@runtime_checkable
class Store(Protocol):
    """Content-addressed bytes: what the client and workers need from storage."""

    def put(self, data: bytes) -> str:
        """Keep ``data`` and return its CID; putting the same bytes twice is harmless."""
        ...

    def get(self, cid: str) -> bytes:
        """Return the bytes for ``cid``, checked against it (IntegrityError if they differ)."""
        ...

    def has(self, cid: str) -> bool:
        """Whether the bytes for ``cid`` are held here, without fetching them."""
        ...

    def pin(self, cid: str) -> None:
        """Keep ``cid`` from garbage collection for as long as the store lives."""
        ...


def verify(cid: str, data: bytes | bytearray | memoryview) -> bool:
    """Check ``data`` against ``cid``; True if checked here, False if left to the node.

    A raw CID names one block by its hash, so the bytes are re-hashed and an
    IntegrityError raised on mismatch. A dag-pb CID (a multi-block file as a
    node chunked it) names a tree whose shape depends on the node's chunker;
    rebuilding it would mean reimplementing UnixFS, so such content is trusted
    to the node, which hashes every block it serves. That is not the last line:
    the chain records a sha256 of every task and result payload, and the client
    checks the bytes against that digest before decoding them.
    """
    p = parse_cid(cid)
    if p.codec == DAG_PB:
        return False
    if p.codec != RAW:
        raise StoreError(
            f"CID {cid} uses the {p.codec_name} codec, which decloud does not store: pass a raw or dag-pb CID."
        )
    if p.hash_code == IDENTITY:
        actual = bytes(data)
    elif p.hash_code in _HASHERS:
        actual = hashlib.new(_HASHERS[p.hash_code], data).digest()
    else:
        raise StoreError(
            f"CID {cid} uses hash function {p.hash_code:#x}, which decloud cannot check: store the content with sha2-256."
        )
    if actual != p.digest:
        raise IntegrityError(
            f"The {len(data)} bytes returned for {cid} do not match it: the store is corrupted or the node "
            "is lying, so discard them and fetch the content again from a trusted node."
        )
    return True
