"""The one interface every content store offers, and the check applied on read.

Stores hand back bytes from places we do not control (a remote IPFS node, a
disk another process writes to), so every ``get`` is checked against the CID
before the bytes reach the package decoder.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ..buffers import Pieces
from ..errors import IntegrityError, StoreError
from .cid import DAG_PB, IDENTITY, RAW, SHA2_256, SHA2_512, parse_cid
from .unixfs import file_root

_HASHERS = {SHA2_256: "sha256", SHA2_512: "sha512"}


@runtime_checkable
class Store(Protocol):
    """Content-addressed bytes: what the client and workers need from storage."""

    def put(self, data: Pieces) -> str:
        """Keep ``data`` and return its CID; putting the same bytes twice is harmless.

        ``data`` is bytes-like, or a sequence of bytes-like pieces stored as
        their concatenation (a package as it is built, so it is never joined).
        """
        ...

    def get(self, cid: str) -> bytes | memoryview:
        """Return the bytes for ``cid``, checked against it (IntegrityError if they differ).

        Bytes-like: a large payload may come back as a read-only ``memoryview``.
        """
        ...

    def has(self, cid: str) -> bool:
        """Whether the bytes for ``cid`` are held here, without fetching them."""
        ...

    def pin(self, cid: str) -> None:
        """Keep ``cid`` from garbage collection for as long as the store lives."""
        ...


def put_all(store: Store, items: Sequence[Pieces]) -> list[str]:
    """Store each of ``items``; their CIDs in order. In one go where the store can (``put_many``)."""
    put_many = getattr(store, "put_many", None)
    if put_many is not None:
        return list(put_many(items))
    return [store.put(item) for item in items]


def verify(cid: str, data: bytes | bytearray | memoryview) -> bool:
    """Check ``data`` against ``cid``; True if checked here, False if left to the node.

    A raw CID names one block by its hash, so the bytes are re-hashed. A dag-pb
    CID names a UnixFS tree: the bytes are chunked again the way ``ipfs add
    --cid-version=1 --raw-leaves`` chunks them, and a root equal to the CID
    proves them (IntegrityError is raised only where the check is conclusive).
    A dag-pb root that differs may still be honest, because another chunker or
    layout (or a CIDv0, whose leaves are not raw) gives another tree for the
    same bytes; such content is trusted to the node, which hashes every block it
    serves, and the chain's digest of a result is checked before decoding.
    """
    p = parse_cid(cid)
    if p.codec == DAG_PB:
        if p.version != 1 or p.hash_code != SHA2_256:
            return False  # not a tree of raw leaves, so not one ours could equal
        return file_root(data).digest == p.digest
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
