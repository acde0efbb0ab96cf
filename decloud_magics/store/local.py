"""An on-disk blockstore: the ``local`` network's IPFS stand-in, with the same CIDs.

One file per payload, named by the CID ``ipfs add --cid-version=1
--raw-leaves`` gives it, so a payload stored here and one added to a real node
get the same name. A payload over one chunk is named by the root of its UnixFS
tree, but kept whole in one file: the tree's inner nodes are rebuilt from the
bytes on every read (that rebuild is the check), and one file is written and
read faster than hundreds of 256 KiB blocks. Several kernels and worker
processes share the folder, so writes go to a private temp file and are
renamed into place: a reader sees either no file or a whole one, never a
half-written file.
"""

from __future__ import annotations

import hashlib
import io
import mmap
import os
import tempfile
from pathlib import Path

from ..buffers import LARGE, Pieces, as_views
from ..errors import ContentNotFound, IntegrityError, StoreError
from .cid import DAG_PB, RAW, SHA2_256, ParsedCid, parse_cid
from .unixfs import file_root

_TMP_PREFIX = ".tmp-"


class LocalStore:
    """Payloads in ``root/<shard>/<cid>``, checked against their CID on every read."""

    def __init__(self, root: Path | str | None = None) -> None:
        if root is None:
            from ..paths import decloud_home

            root = decloud_home() / "blocks"
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"Cannot create the block folder {self.root} ({exc.strerror}): set DECLOUD_HOME to a writable folder."
            ) from None

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def path_for(self, cid: str) -> Path:
        """Where a block lives; sharded so no directory grows past a few thousand files.

        Like IPFS flatfs ``next-to-last/2``: the two characters before the last
        one. The last base32 character carries only 3 bits of the digest (288
        bits do not fill whole 5-bit characters), so it would spread blocks
        over 8 folders instead of 1024.
        """
        name = self._name(cid)
        return self.root / name[-3:-1] / name

    def put(self, data: Pieces) -> str:
        """Store ``data`` (hashed once, written once) and return its CID.

        ``data`` may be a sequence of pieces: they are hashed and written in
        place, never joined into one buffer first.
        """
        views = as_views(data)
        size = sum(v.nbytes for v in views)
        cid = file_root(views).to_v1()
        path = self.root / cid[-3:-1] / cid
        try:
            if os.stat(path).st_size == size:
                return cid  # already here: same name means same bytes
        except FileNotFoundError:
            pass
        shard = path.parent
        try:
            shard.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=shard)
            try:
                with open(fd, "wb", buffering=0) as f:
                    for view in views:
                        _write_all(f, view)
                # Atomic on POSIX: concurrent writers of one CID all rename whole,
                # identical files over each other, and the last one wins harmlessly.
                os.replace(tmp, path)
            except BaseException:
                _unlink_quietly(tmp)
                raise
        except OSError as exc:
            raise StoreError(
                f"Could not write a {size}-byte block to {shard} ({exc.strerror}): "
                "free some disk space or set DECLOUD_HOME to another folder."
            ) from None
        return cid

    def get(self, cid: str) -> bytes | memoryview:
        """The bytes for ``cid``; IntegrityError if the file on disk no longer matches it.

        A large payload comes back as a read-only ``memoryview`` of the file
        mapped into memory: nothing is copied before the bytes are checked.
        """
        path = self.path_for(cid)
        try:
            with open(path, "rb", buffering=0) as f:
                stat = os.fstat(f.fileno())
                data = _read_all(f, stat.st_size)
                inode = stat.st_ino
        except FileNotFoundError:
            raise ContentNotFound(
                f"The local store has no block {cid}: put the content first, or use the network that stored it."
            ) from None
        except OSError as exc:
            raise StoreError(
                f"Could not read block {path} ({exc.strerror}): check the folder's permissions."
            ) from None
        if not _matches(parse_cid(path.name), data):
            moved = self._quarantine(path, inode)
            raise IntegrityError(
                f"The block file for {cid} is damaged (its bytes no longer match the CID)"
                + (f" and was moved to {moved.name}" if moved else "")
                + ": put the content again or fetch it from another copy."
            )
        return data

    def has(self, cid: str) -> bool:
        """Whether a block for ``cid`` is on disk (not re-hashed; ``get`` checks)."""
        try:
            return self.path_for(cid).is_file()
        except ContentNotFound:
            return False

    def pin(self, cid: str) -> None:
        """Nothing is ever collected here, so pinning only checks the block exists."""
        if not self.has(cid):
            raise ContentNotFound(
                f"Cannot pin {cid}: the local store has no such block; put the content first."
            )

    def _name(self, cid: str) -> str:
        p = parse_cid(cid)  # StoreError for strings that are not CIDs at all
        if p.codec not in (RAW, DAG_PB) or p.hash_code != SHA2_256:
            raise ContentNotFound(
                f"The local store holds only sha2-256 raw and dag-pb CIDs ('bafkrei...', 'bafybei...'), "
                f"not {cid}: fetch it from the IPFS node that returned it."
            )
        # The canonical text, so an upper-case or base58 spelling finds the same file.
        return p.to_v1()

    def _quarantine(self, path: Path, inode: int) -> Path | None:
        """Move a damaged block aside so the next put rewrites it, unless a writer just replaced it."""
        try:
            if os.stat(path).st_ino != inode:
                return None
            fd, aside = tempfile.mkstemp(prefix=path.name + ".corrupt-", dir=path.parent)
            os.close(fd)
            os.replace(path, aside)
            return Path(aside)
        except OSError:
            return None


def _matches(p: ParsedCid, data: bytes | memoryview) -> bool:
    """Whether ``data`` is what ``p`` names.

    A raw name is one block's sha256 whatever its size (blocks stored before
    large payloads were chunked are single raw blocks too); a dag-pb name is
    the root of the tree the bytes give.
    """
    if p.codec == RAW:
        return hashlib.sha256(data).digest() == p.digest
    return file_root(data) == ParsedCid(1, p.codec, p.hash_code, p.digest)


def _read_all(f: io.FileIO, size: int) -> bytes | memoryview:
    """The whole file: read when small, mapped read-only when large (``size`` from fstat).

    Mapping spares a copy of every byte: the hash check and the decoder read
    the page cache in place. It is safe because a block file is never changed
    in place: writers rename whole new files over it, and a mapping keeps the
    bytes of the file it was made from, even after a rename or an unlink.
    """
    if size < LARGE:
        return f.read()  # one read sized by fstat: no intermediate copies
    try:
        return memoryview(mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ))
    except (OSError, ValueError):  # a file system that cannot map files, or a file that shrank
        return f.read()


def _write_all(f: io.FileIO, view: memoryview) -> None:
    """Write every byte; unbuffered writes may be partial on some file systems."""
    written = 0
    total = view.nbytes
    while written < total:
        n = f.write(view[written:])
        if not n:
            raise OSError(28, "No space left on device")
        written += n


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
