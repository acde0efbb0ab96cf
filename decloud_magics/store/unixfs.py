"""The CID ``ipfs add --cid-version=1 --raw-leaves`` gives a file, computed without a node.

An IPFS node cuts a file into 262,144-byte chunks, keeps each as a raw block,
and links them with dag-pb nodes that carry UnixFS ``File`` metadata, at most
174 links a node, filled level by level (the "balanced" layout, the default of
Kubo and js-ipfs). A file of one chunk is named by its raw block alone.
Building the same tree here gives the root CID a node gives, so the local
blockstore, any IPFS node and the chain use one name per content, and bytes
fetched under a tree CID can be checked here rather than on the node's word.

Chunking also makes hashing parallel: one large block is a single sha256 that
only one core can run, while leaves hash independently, and hashlib releases
the GIL while it hashes a large buffer, so threads use every core (100 MB on
two idle cores: 33 ms, against 56 ms for one sha256; no worse when the other
core is busy).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence

from ..buffers import BytesLike, Pieces, as_views
from .cid import DAG_PB, RAW, SHA2_256, ParsedCid, _varint

#: Bytes per leaf: the default chunker of ``ipfs add`` (``size-262144``).
CHUNK_SIZE = 262_144
#: Links per dag-pb node in the balanced layout of Kubo and js-ipfs.
MAX_LINKS = 174

# Below this, starting a thread costs about what it saves.
_PARALLEL_MIN = 4 * 1024 * 1024

_RAW_PREFIX = bytes((1, RAW, SHA2_256, 32))  # binary CIDv1 of a raw sha2-256 block, before the digest
_DAG_PB_PREFIX = bytes((1, DAG_PB, SHA2_256, 32))
_FILE_TYPE = b"\x08\x02"  # UnixFS Data.Type = File


def file_root(data: Pieces, *, chunk_size: int = CHUNK_SIZE, max_links: int = MAX_LINKS) -> ParsedCid:
    """The root of the UnixFS file an IPFS node builds from ``data`` (raw for one chunk).

    ``data`` is bytes-like, or a sequence of bytes-like pieces that make the
    file end to end (a package as it is built, never joined in memory).
    ``chunk_size`` and ``max_links`` are the node's ``size-N`` chunker and
    links per node; other values than the defaults name other trees.
    """
    if chunk_size < 1 or max_links < 2:
        raise ValueError("a tree needs chunks of at least one byte and at least two links per node")
    views = as_views(data)
    if sum(v.nbytes for v in views) <= chunk_size:
        digest = hashlib.sha256()
        for view in views:
            digest.update(view)
        return ParsedCid(1, RAW, SHA2_256, digest.digest())
    leaves = chunked(views, chunk_size)
    # (binary CID, file bytes below it, Tsize: every block's bytes below it)
    level = [
        (_RAW_PREFIX + digest, len(leaf), len(leaf))
        for digest, leaf in zip(leaf_digests(leaves), leaves, strict=True)
    ]
    while True:
        parents = [_parent(level[i : i + max_links]) for i in range(0, len(level), max_links)]
        if len(parents) == 1:
            return ParsedCid(1, DAG_PB, SHA2_256, parents[0][0][len(_DAG_PB_PREFIX) :])
        level = parents


def chunked(views: Sequence[memoryview], chunk_size: int = CHUNK_SIZE) -> list[memoryview]:
    """The ``chunk_size`` chunks of the views end to end, as the node's chunker cuts them.

    A chunk inside one piece is a slice of it; only a chunk that straddles
    pieces is copied, so a package's large value is never copied to be hashed.
    """
    out: list[memoryview] = []
    pending = bytearray()  # the start of a chunk that began in an earlier piece
    for view in views:
        at = 0
        if pending:
            at = min(chunk_size - len(pending), view.nbytes)
            pending += view[:at]
            if len(pending) < chunk_size:
                continue
            out.append(memoryview(bytes(pending)))
            pending = bytearray()
        full_end = at + (view.nbytes - at) // chunk_size * chunk_size
        out += [view[s : s + chunk_size] for s in range(at, full_end, chunk_size)]
        pending += view[full_end:]
    if pending:
        out.append(memoryview(bytes(pending)))
    return out


def leaf_digests(leaves: Sequence[BytesLike]) -> list[bytes]:
    """sha256 of every leaf, on as many threads as there are cores."""
    total = sum(memoryview(leaf).nbytes for leaf in leaves)
    workers = min(_cores(), len(leaves)) if total >= _PARALLEL_MIN else 1
    if workers == 1:
        return _digests(leaves)
    # Contiguous shares, one per core: each thread walks its own part of memory.
    bounds = [len(leaves) * k // workers for k in range(workers + 1)]
    shares = [leaves[bounds[k] : bounds[k + 1]] for k in range(workers)]
    results: list[list[bytes] | None] = [None] * workers

    def run(k: int) -> None:
        results[k] = _digests(shares[k])

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(1, workers)]
    for t in threads:
        t.start()
    try:
        run(0)
    finally:
        for t in threads:
            t.join()
    digests: list[bytes] = []
    for part in results:
        if part is None:  # the thread died (MemoryError): never return a short list
            raise MemoryError("a hashing thread ran out of memory")
        digests += part
    return digests


def _digests(leaves: Sequence[BytesLike]) -> list[bytes]:
    sha256 = hashlib.sha256
    return [sha256(leaf).digest() for leaf in leaves]


def _parent(children: list[tuple[bytes, int, int]]) -> tuple[bytes, int, int]:
    """One dag-pb File node over ``children``: its binary CID, file size and Tsize."""
    links = []
    for cid, _size, tsize in children:
        # PBLink: Hash (1), Name (2, empty but present, as nodes write it), Tsize (3)
        link = b"\x0a" + _varint(len(cid)) + cid + b"\x12\x00\x18" + _varint(tsize)
        links.append(b"\x12" + _varint(len(link)) + link)
    file_size = sum(size for _cid, size, _tsize in children)
    # UnixFS Data: Type (1) = File, filesize (3), blocksizes (4, repeated, not packed)
    unixfs = _FILE_TYPE + b"\x18" + _varint(file_size)
    unixfs += b"".join(b"\x20" + _varint(size) for _cid, size, _tsize in children)
    # PBNode: the links (2) come before the data (1) in dag-pb's canonical form
    block = b"".join(links) + b"\x0a" + _varint(len(unixfs)) + unixfs
    tsize = len(block) + sum(t for _cid, _size, t in children)
    return _DAG_PB_PREFIX + hashlib.sha256(block).digest(), file_size, tsize


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1
