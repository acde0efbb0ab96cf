"""Content identifiers (CIDs) computed and read without any IPFS library.

Payloads are named by the CID an IPFS node would give them, so the local
blockstore, a Kubo/js-ipfs node and the chain all agree on one name per
content: what ``ipfs add --cid-version=1 --raw-leaves`` prints. Up to one
chunk (256 KiB) that is a CIDv1 with the ``raw`` codec and a sha2-256
multihash, written in lower-case base32 (``bafkrei...``); a larger payload is
named by the dag-pb root of its UnixFS tree (``bafybei...``, see
``unixfs.py``). CIDv0 (``Qm...``) is parsed too, because nodes still name
files that way.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import StoreError

if TYPE_CHECKING:
    from ..buffers import Pieces

# Multicodec and multihash codes (https://github.com/multiformats/multicodec).
RAW = 0x55
DAG_PB = 0x70
IDENTITY = 0x00
SHA2_256 = 0x12
SHA2_512 = 0x13

CODEC_NAMES = {RAW: "raw", DAG_PB: "dag-pb", 0x71: "dag-cbor", 0x0129: "dag-json"}

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}

# A CID is short; anything far longer is not one and would only waste time.
_MAX_CID_CHARS = 512


@dataclass(frozen=True)
class ParsedCid:
    """The parts of a CID that decide how its bytes can be checked."""

    version: int
    codec: int
    hash_code: int
    digest: bytes

    @property
    def codec_name(self) -> str:
        return CODEC_NAMES.get(self.codec, hex(self.codec))

    def multihash(self) -> bytes:
        return _varint(self.hash_code) + _varint(len(self.digest)) + self.digest

    def to_v1(self) -> str:
        """The canonical base32 CIDv1 text, so one content has one file name."""
        return "b" + _b32(_varint(1) + _varint(self.codec) + self.multihash())


def cid_for(data: Pieces) -> str:
    """The CIDv1 ``ipfs add --cid-version=1 --raw-leaves`` gives ``data`` (base32).

    ``data`` is bytes-like, or bytes-like pieces that make the content end to end.

    Raw sha2-256 for up to one chunk, else the root of the UnixFS tree.
    """
    from .unixfs import file_root  # it builds on this module's codes and varints

    return file_root(data).to_v1()


def cid_from_sha256(digest: bytes) -> str:
    """The raw CIDv1 of one block whose sha256 is already known."""
    if len(digest) != 32:
        raise StoreError(
            f"A sha256 digest is 32 bytes, got {len(digest)}: pass hashlib.sha256(data).digest()."
        )
    # version 1, codec raw, multihash sha2-256 of length 32: all single-byte varints.
    return "b" + _b32(bytes((1, RAW, SHA2_256, 32)) + digest)


def parse_cid(cid: str) -> ParsedCid:
    """Split a CID into version, codec and multihash, refusing anything malformed."""
    if not isinstance(cid, str) or not cid:
        raise StoreError(f"{cid!r} is not a CID: pass the CID string a store returned (e.g. 'bafkrei...').")
    text = cid.strip()
    if len(text) > _MAX_CID_CHARS:
        raise StoreError(
            f"A {len(text)}-character string is not a CID: pass the CID string a store returned."
        )
    if len(text) == 46 and text.startswith("Qm"):
        raw = _b58decode(text, cid)
        hash_code, digest = _read_multihash(raw, 0, cid)
        if hash_code != SHA2_256:
            raise StoreError(
                f"{cid!r} is not a valid CIDv0 (it must hold a sha2-256 hash): check that it was copied whole."
            )
        return ParsedCid(0, DAG_PB, hash_code, digest)
    raw = _decode_multibase(text, cid)
    version, pos = _read_varint(raw, 0, cid)
    if version != 1:
        raise StoreError(
            f"{cid!r} has CID version {version}; only versions 0 and 1 exist: check that it was copied whole."
        )
    codec, pos = _read_varint(raw, pos, cid)
    hash_code, digest = _read_multihash(raw, pos, cid)
    return ParsedCid(1, codec, hash_code, digest)


def digest_of(cid: str) -> bytes:
    """The hash digest inside a CID (for a raw sha256 CID: sha256 of the content)."""
    return parse_cid(cid).digest


def is_raw_sha256(cid: str) -> bool:
    """Whether the CID names one raw block by sha256, so a client can check bytes itself."""
    try:
        p = parse_cid(cid)
    except StoreError:
        return False
    return p.version == 1 and p.codec == RAW and p.hash_code == SHA2_256 and len(p.digest) == 32


# -- encodings -----------------------------------------------------------------


def _b32(raw: bytes) -> str:
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def _decode_multibase(text: str, cid: str) -> bytes:
    prefix, body = text[0], text[1:]
    try:
        if prefix in "bB":  # base32 (lower / upper), no padding
            body = body.upper()
            return base64.b32decode(body + "=" * (-len(body) % 8))
        if prefix == "z":  # base58btc
            return _b58decode(body, cid)
        if prefix in "fF":  # base16
            return bytes.fromhex(body)
    except (binascii.Error, ValueError):
        raise StoreError(
            f"{cid!r} is not a valid CID (its encoding is broken): check that it was copied whole."
        ) from None
    raise StoreError(
        f"{cid!r} is not a CID this store reads: pass a base32 CIDv1 ('b...') or a CIDv0 ('Qm...')."
    )


def _b58decode(text: str, cid: str) -> bytes:
    n = 0
    for ch in text:
        try:
            n = n * 58 + _B58_INDEX[ch]
        except KeyError:
            raise StoreError(
                f"{cid!r} is not a valid CID ({ch!r} is not base58): check that it was copied whole."
            ) from None
    zeros = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\x00" * zeros + body


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(raw: bytes, pos: int, cid: str) -> tuple[int, int]:
    value = shift = 0
    for i in range(pos, min(len(raw), pos + 9)):  # multiformats varints are at most 9 bytes
        byte = raw[i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i + 1
        shift += 7
    raise StoreError(f"{cid!r} is not a valid CID (it ends too early): check that it was copied whole.")


def _read_multihash(raw: bytes, pos: int, cid: str) -> tuple[int, bytes]:
    hash_code, pos = _read_varint(raw, pos, cid)
    length, pos = _read_varint(raw, pos, cid)
    digest = raw[pos:]
    if len(digest) != length:
        raise StoreError(
            f"{cid!r} is not a valid CID (its hash should be {length} bytes, found {len(digest)}): check that it was copied whole."
        )
    if hash_code == SHA2_256 and length != 32:
        raise StoreError(
            f"{cid!r} is not a valid CID (a sha2-256 hash is 32 bytes): check that it was copied whole."
        )
    return hash_code, bytes(digest)
