"""A value as bytes, as a codec makes it: whole, or in parts not yet joined."""

from __future__ import annotations

from dataclasses import dataclass

from .buffers import BytesLike

#: ``Encoded.data`` is ``BytesLike``: a decoded package hands out zero-copy slices of itself.
Parts = tuple[BytesLike, ...]


@dataclass(frozen=True)
class Encoded:
    """A value as bytes: ``codec`` says how to read ``data``; ``type_name`` is what it was.

    ``data`` is ``bytes`` when encoded here and a read-only ``memoryview`` into
    the package when decoded from one, which saves a copy of every large value.
    """

    codec: str
    data: BytesLike
    type_name: str


@dataclass(frozen=True)
class EncodedParts:
    """A value as buffers to be written one after another, before they are joined.

    The parts may share memory with the value itself (an array's data, an
    Arrow buffer), so a package can copy them once, straight into its own
    bytes; use them before the value changes.
    """

    codec: str
    parts: Parts
    type_name: str

    @property
    def nbytes(self) -> int:
        return sum(memoryview(p).nbytes for p in self.parts)

    def joined(self) -> Encoded:
        """The value as one ``bytes``: one copy of the parts, none for a single ``bytes``."""
        if len(self.parts) == 1 and type(self.parts[0]) is bytes:
            return Encoded(self.codec, self.parts[0], self.type_name)
        return Encoded(self.codec, b"".join(self.parts), self.type_name)


class NoSafeFormat(Exception):
    """This codec cannot carry the value exactly; try the next one."""
