"""Fresh memory for large payloads, taken straight from the kernel.

A 100 MB package is built, a value is decoded and a result is read back in
fresh memory. A ``bytearray`` of that size is zeroed by the allocator and then
overwritten; a private anonymous mapping starts as the kernel's shared zero
page and each page is filled once, by the copy itself (100 MB: ~40 ms here,
against ~65 ms for a ``bytearray``). It is page-aligned, which suits NumPy,
and goes back to the kernel with its last view.

Transparent huge pages would fill faster still on bare metal (numpy advises
its large arrays for them), but on a virtual machine that hands freed memory
back to its host (free page reporting, as here) a huge page left idle for a
second or two is faulted in from the host again: 100 MB then took 150-220 ms
against a steady 40 ms for normal pages, so no huge-page advice is given.
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence

#: Below this, a ``bytearray`` (or ``bytes``) costs no more: few pages, and
#: a huge page would be mostly empty.
LARGE = 4 * 1024 * 1024

BytesLike = bytes | bytearray | memoryview
#: A payload: bytes-like, or bytes-like pieces that make it end to end.
Pieces = BytesLike | Sequence[BytesLike]

_PRIVATE = getattr(mmap, "MAP_PRIVATE", None)  # POSIX only: elsewhere a bytearray
_ANONYMOUS = getattr(mmap, "MAP_ANONYMOUS", None)


def fresh_buffer(size: int) -> memoryview:
    """A writable, zero-filled buffer of ``size`` bytes; a private mapping when large."""
    if size < LARGE or _PRIVATE is None or _ANONYMOUS is None:
        return memoryview(bytearray(size))
    try:
        # Private, not shared: shared anonymous memory is shmem, a file in all but name.
        area = mmap.mmap(-1, size, flags=_PRIVATE | _ANONYMOUS)
    except OSError:
        return memoryview(bytearray(size))
    return memoryview(area)  # the view keeps the mapping alive; it is unmapped with the last view


def as_views(data: Pieces) -> list[memoryview]:
    """``data`` as flat byte views: one for a bytes-like object, one per piece of a sequence."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return [memoryview(data).cast("B")]
    return [memoryview(piece).cast("B") for piece in data]


def join(parts: Sequence[BytesLike]) -> bytes | memoryview:
    """``parts`` copied once into one buffer: ``bytes`` when small, a read-only view when large.

    >>> join([b"ab", memoryview(b"cd")])
    b'abcd'
    """
    views = as_views(parts)
    total = sum(v.nbytes for v in views)
    if total < LARGE:
        return b"".join(views)
    out = fresh_buffer(total)
    at = 0
    for v in views:
        out[at : at + v.nbytes] = v
        at += v.nbytes
    return out.toreadonly()
