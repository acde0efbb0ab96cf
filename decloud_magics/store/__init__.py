"""Content-addressed storage: payloads go in as bytes and come back checked against their CID.

``LocalStore`` is the ``local`` network's blockstore on disk; ``KuboStore``
talks to any IPFS node speaking the Kubo RPC API. Both give content the CID
``cid_for`` computes (that of ``ipfs add --cid-version=1 --raw-leaves``), so a
CID means the same bytes everywhere.
"""

from __future__ import annotations

from .base import Store, verify
from .cid import ParsedCid, cid_for, cid_from_sha256, digest_of, is_raw_sha256, parse_cid
from .kubo import KuboStore
from .local import LocalStore

__all__ = [
    "KuboStore",
    "LocalStore",
    "ParsedCid",
    "Store",
    "cid_for",
    "cid_from_sha256",
    "digest_of",
    "is_raw_sha256",
    "parse_cid",
    "verify",
]
