"""A small, direct client for the Kubo RPC API (``/api/v0``) that IPFS nodes speak.

Why not ``ipfshttpclient``: its ``connect()`` accepts only daemons
0.4.23 <= v < 0.8.0 and raises VersionMismatch for every current Kubo
(``Client(addr)`` skips the check, but the library targets that old API). The
five calls we need are a few lines each, and owning them lets us tell the node
its own timeout (an online node searches forever for a CID nobody has), retry a
crashed node but not a node's answer, and check every byte that comes back.
Speed is not the reason: measured with ``benchmarks/store_clients.py`` (50 MB,
js-ipfs 0.66.1, 2 cores shared with other work), adds ran at 34-92 MB/s through
``ipfshttpclient.Client`` and 26-96 MB/s through this client (0.75-1.16x from
run to run); the node, which fsyncs every block, is the limit. Against a server
that only drops the body, the client side alone ran 250-700 MB/s vs 385-940
MB/s (1.25-1.56x).

``requests`` is imported on first use, so ``import decloud_magics.store`` stays
cheap for the ``local`` network, which never talks HTTP.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..buffers import Pieces, as_views
from ..errors import ContentNotFound, IntegrityError, NetworkUnreachable, StoreError
from ..node_responses import multipart_files, node_error
from ..sessions import node_session
from .base import verify
from .cid import RAW, cid_for, parse_cid
from .unixfs import CHUNK_SIZE

if TYPE_CHECKING:
    import requests
    from typing_extensions import Self

DEFAULT_API_URL = "http://127.0.0.1:5001"

# The settings of ``ipfs add --cid-version=1 --raw-leaves`` with the default
# chunker, named explicitly so a node configured otherwise still builds the
# tree ``cid_for`` builds: the answer can be checked at once, and content gets
# the same CID here as in the local store and on any other node.
_ADD_PARAMS = {
    "chunker": f"size-{CHUNK_SIZE}",
    "cid-version": "1",
    "raw-leaves": "true",
    "pin": "true",
    "hash": "sha2-256",
    "quieter": "true",
    "cid-base": "base32",
}

#: Bytes in one ``add`` of many contents: the request is joined in memory before it is sent.
_MAX_ADD_BYTES = 64 * 1024 * 1024

# Words the node uses when it does not hold a block (Kubo and js-ipfs differ).
_NOT_FOUND_WORDS = ("not found", "notfound", "could not find", "no link named", "does not exist")


class KuboStore:
    """Content kept by an IPFS node through its RPC API; every read is checked."""

    def __init__(
        self,
        api_url: str = DEFAULT_API_URL,
        timeout: float = 60.0,
        retries: int = 3,
        *,
        connect_timeout: float = 5.0,
        lookup_timeout: float = 2.0,
        backoff: float = 0.25,
    ) -> None:
        self.api_url = _http_url(api_url)
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self.connect_timeout = min(float(connect_timeout), self.timeout)
        self.lookup_timeout = float(lookup_timeout)
        self.backoff = float(backoff)
        # One session per thread: workers share a store across threads, and a
        # requests.Session is not documented as thread-safe.
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"KuboStore({self.api_url!r})"

    # -- the Store protocol ----------------------------------------------------

    def put(self, data: Pieces) -> str:
        """Add and pin ``data`` on the node; return its CID, checked against ``cid_for(data)``."""
        return self.put_many([data])[0]

    def put_many(self, items: Sequence[Pieces]) -> list[str]:
        """Add and pin each of ``items`` (its own file), in as few requests as fit; their CIDs in order.

        A node spends a good part of a small add on the request itself (js-ipfs:
        5.3 ms a package one by one, 2.1 ms in requests of 100), so a batch of
        tasks stores its packages together. Each CID is checked against
        ``cid_for`` of its content, as for one ``put``.
        """
        cids: list[str] = []
        group: list[list[memoryview]] = []
        size = 0
        for item in items:
            views = as_views(item)
            nbytes = sum(v.nbytes for v in views)
            if group and size + nbytes > _MAX_ADD_BYTES:
                cids += self._add(group)
                group, size = [], 0
            group.append(views)
            size += nbytes
        if group:
            cids += self._add(group)
        return cids

    def _add(self, files: list[list[memoryview]]) -> list[str]:
        body, content_type = multipart_files([(f"f{index}", views) for index, views in enumerate(files)])
        resp = self._call(
            "add",
            _ADD_PARAMS,
            body=body,
            headers={"Content-Type": content_type},
            what="add content" if len(files) == 1 else f"add {len(files)} contents",
        )
        added = _added_cids(resp.text, self.api_url)
        named = dict(added)
        if not all(f"f{index}" in named for index in range(len(files))):
            if len(added) != len(files):
                raise StoreError(
                    f"The IPFS node at {self.api_url} accepted {len(files)} contents but named "
                    f"{len(added)}: check the node's log."
                )
            named = {f"f{index}": cid for index, (_name, cid) in enumerate(added)}  # in the order sent
        cids = []
        for index, views in enumerate(files):
            answer = named[f"f{index}"]
            parsed = parse_cid(answer)  # a node answering garbage fails here, not at the next get
            # js-ipfs writes CIDv1 in base58btc ("zb2r..."), Kubo in base32: one spelling
            # everywhere keeps CIDs comparable as strings across stores and the chain.
            cid = parsed.to_v1() if parsed.version == 1 else answer
            expected = cid_for(views)
            if cid != expected:
                size = sum(v.nbytes for v in views)
                raise IntegrityError(
                    f"The IPFS node at {self.api_url} named {size} bytes {cid}, but their content address is "
                    f"{expected}: the node is misconfigured or corrupting data, so use another node."
                )
            cids.append(cid)
        return cids

    def get(self, cid: str) -> bytes:
        """The content for ``cid`` from the node, re-hashed here when the CID allows it."""
        import requests

        parsed = parse_cid(cid)
        if parsed.version == 1 and parsed.codec == RAW:
            # One raw block: ``block/get`` skips the node's UnixFS reader, which on js-ipfs
            # is 0.6 of the 1.6 ms a small task's package takes to fetch.
            data = self._call("block/get", {"arg": cid}, what=f"return {cid}", lookup=self.timeout).content
            verify(cid, data)  # IntegrityError when the bytes are not the CID's
            return data
        resp = self._call("cat", {"arg": cid}, stream=True, what=f"return {cid}", lookup=self.timeout)
        try:
            # Joined once at the end: growing a bytearray and converting it would copy twice.
            chunks = list(resp.iter_content(chunk_size=1024 * 1024))
        except requests.exceptions.RequestException as exc:  # a node dying mid-answer breaks the connection
            raise NetworkUnreachable(
                f"The IPFS node at {self.api_url} stopped answering while sending {cid} ({type(exc).__name__}): "
                "check that it is still running and try again."
            ) from None
        finally:
            resp.close()
        data = b"".join(chunks)
        del chunks
        if not verify(cid, data):
            self._check_size(cid, len(data))
        return data

    def _check_size(self, cid: str, got: int) -> None:
        """Catch a cut-short multi-block answer, which would otherwise pass unnoticed.

        A node that fails mid-``cat`` (a timeout, a lost block) has already sent
        200 and reports the error only in an HTTP trailer, which ``requests``
        drops; the stream just ends early. The file's size from ``files/stat``
        tells a whole answer from a truncated one.
        """
        stat = self._call(
            "files/stat", {"arg": f"/ipfs/{cid}"}, what=f"report the size of {cid}", lookup=self.timeout
        )
        size = stat.json().get("Size")
        if isinstance(size, int) and size != got:
            raise IntegrityError(
                f"The IPFS node at {self.api_url} sent {got} of the {size} bytes of {cid}: it stopped mid-answer "
                f"(perhaps the {self.timeout:g} s timeout), so try again or pass a longer timeout."
            )

    def has(self, cid: str) -> bool:
        """Whether the node holds the block locally, without searching the network.

        Kubo answers ``offline=true`` at once; js-ipfs ignores it and waits for
        peers even when offline, so a missing block costs ``lookup_timeout``.
        """
        parse_cid(cid)
        try:
            self._call(
                "block/stat",
                {"arg": cid, "offline": "true"},
                what=f"look up {cid}",
                lookup=self.lookup_timeout,
            )
        except ContentNotFound:
            return False
        return True

    def pin(self, cid: str) -> None:
        """Pin ``cid`` so the node's garbage collector keeps it."""
        parse_cid(cid)
        self._call("pin/add", {"arg": cid}, what=f"pin {cid}", lookup=self.timeout)

    # -- node information ---------------------------------------------------------

    def version(self) -> str:
        """The node's version string (NetworkUnreachable if it does not answer)."""
        return str(self._call("version", {}, what="report its version").json().get("Version", "unknown"))

    def id(self) -> dict[str, Any]:
        """The node's identity (peer ID, addresses, agent version)."""
        return dict(self._call("id", {}, what="report its identity").json())

    def ping(self) -> bool:
        """Whether the node answers right now; never raises for a node that is down."""
        try:
            self._call("version", {}, what="report its version", retries=0)
        except (NetworkUnreachable, StoreError):
            return False
        return True

    def close(self) -> None:
        """Close the keep-alive connections of every thread's session."""
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for s in sessions:
            s.close()
        self._local = threading.local()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- HTTP -----------------------------------------------------------------

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = node_session(self.api_url, user_agent="decloud-store")
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def _call(
        self,
        endpoint: str,
        params: dict[str, str],
        *,
        what: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
        retries: int | None = None,
        lookup: float | None = None,
    ) -> requests.Response:
        """POST one RPC call; retry connection failures and server faults with backoff.

        ``lookup`` is for calls that may search for content: the node is told to
        give up after that many seconds (an online node would search forever for
        a CID nobody has), and we wait a little longer than it does.
        """
        import requests

        read_timeout = self.timeout
        if lookup is not None:
            params = {**params, "timeout": f"{max(1, int(lookup * 1000))}ms"}
            read_timeout = lookup + 5.0

        url = f"{self.api_url}/api/v0/{endpoint}"
        attempts = 1 + (self.retries if retries is None else retries)
        failure = ""
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                resp = self._session().post(
                    url,
                    params=params,
                    data=body,
                    headers=headers,
                    stream=stream,
                    timeout=(self.connect_timeout, read_timeout),
                )
            except requests.exceptions.ConnectionError:
                failure = "down"
                continue  # refused, reset, or no connection within connect_timeout
            except requests.exceptions.Timeout:
                # The node took the request but is silent: retrying would only
                # multiply the wait the caller already chose.
                raise NetworkUnreachable(
                    f"The IPFS node at {self.api_url} did not {what} within {read_timeout:g} s: "
                    "check that it is not overloaded, or pass a longer timeout."
                ) from None
            if resp.status_code < 400:
                return resp
            message = node_error(resp)
            if resp.status_code >= 500 and message is None:
                failure = f"HTTP {resp.status_code}"
                resp.close()
                continue  # a crash or a proxy fault, not an answer: worth another try
            resp.close()
            _raise_for_answer(self.api_url, what, resp.status_code, message or resp.reason, lookup)
        if failure == "down":
            raise NetworkUnreachable(
                f"The IPFS node at {self.api_url} did not answer: start it (decloud devnet up) "
                "or pass --ipfs-api with a running node's URL."
            )
        raise StoreError(
            f"The IPFS node at {self.api_url} failed to {what} ({failure} after {attempts} tries): "
            "check the node's log and restart it."
        )


def _raise_for_answer(api_url: str, what: str, status: int, message: str, lookup: float | None) -> None:
    lowered = message.lower()
    if lookup is not None and "timed out" in lowered:
        raise ContentNotFound(
            f"The IPFS node at {api_url} could not {what}: it found no copy within {lookup:g} s; "
            "put the content first, or use the network whose node stored it."
        )
    if any(w in lowered for w in _NOT_FOUND_WORDS):
        raise ContentNotFound(
            f"The IPFS node at {api_url} could not {what}: it does not hold that content ({message})."
        )
    if "invalid" in lowered and "cid" in lowered:
        raise StoreError(
            f"The IPFS node at {api_url} rejected the CID ({message}): pass the CID a store returned."
        )
    raise StoreError(
        f"The IPFS node at {api_url} refused to {what} (HTTP {status}: {message}): check the node's log."
    )


def _added_cids(text: str, api_url: str) -> list[tuple[str, str]]:
    """``(name, CID)`` of each file in ``add``'s answer, in its order: one JSON object per line."""
    named: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("Hash"):
            named.append((str(obj.get("Name", "")), str(obj["Hash"])))
    if not named:
        raise StoreError(
            f"The IPFS node at {api_url} accepted the content but returned no CID ({text[:200]!r}): check the node's log."
        )
    return named


def _http_url(api: str) -> str:
    """Accept both ``http://host:port`` and the multiaddr form nodes print (``/ip4/.../tcp/5001``)."""
    api = api.strip().rstrip("/")
    if api.startswith("/"):
        parts = api.strip("/").split("/")
        try:
            proto, host, tcp, port = parts[:4]
        except ValueError:
            proto = tcp = ""
        scheme = parts[4] if len(parts) > 4 and parts[4] in ("http", "https") else "http"
        if proto not in ("ip4", "ip6", "dns", "dns4", "dns6") or tcp != "tcp":
            raise StoreError(f"{api!r} is not an IPFS API address: pass a URL like {DEFAULT_API_URL}.")
        if proto == "ip6":
            host = f"[{host}]"
        return f"{scheme}://{host}:{port}"
    if not api.startswith(("http://", "https://")):
        if "://" in api:
            raise StoreError(f"{api!r} is not an IPFS API address: pass a URL like {DEFAULT_API_URL}.")
        api = "http://" + api
    return api.removesuffix("/api/v0")
