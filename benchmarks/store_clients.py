"""Add (and cat) 50 MB through ipfshttpclient and through KuboStore against one IPFS node.

Why this exists: ``decloud_magics.store.kubo`` talks to the node directly
instead of through ``ipfshttpclient``; this script keeps the numbers behind
that choice reproducible.

    python benchmarks/store_clients.py --api http://127.0.0.1:5001
    python benchmarks/store_clients.py --start-node     # a throwaway js-ipfs node from .tools

Fresh random bytes for every add, so neither client profits from blocks the
other already stored. Prints the median of ``--runs`` runs.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from decloud_magics.store import KuboStore


def _multiaddr(api_url: str) -> str:
    host_port = api_url.split("://", 1)[-1].rstrip("/")
    host, port = host_port.rsplit(":", 1)
    return f"/ip4/{host}/tcp/{port}/http" if host[0].isdigit() else f"/dns/{host}/tcp/{port}/http"


def _interleaved(
    size: int, runs: int, ops: dict[str, Callable[[bytes], object]], fresh: bool = True
) -> dict[str, float]:
    """Median MB/s (10**6 bytes) per op; ops alternate order each run so node warm-up and
    repo growth hit both alike."""
    times: dict[str, list[float]] = {name: [] for name in ops}
    data = os.urandom(size)
    names = list(ops)
    for i in range(runs):
        for name in names if i % 2 == 0 else reversed(names):
            if fresh:
                data = os.urandom(size)
            start = time.perf_counter()
            ops[name](data)
            times[name].append(time.perf_counter() - start)
    return {name: size / statistics.median(t) / 1e6 for name, t in times.items()}


def run(api_url: str, size_mb: int, runs: int) -> dict[str, float]:
    """Measure both clients against the node at ``api_url``, print and return the rates."""
    import ipfshttpclient

    size = size_mb * 1_000_000
    store = KuboStore(api_url, timeout=300)
    print(f"node {api_url}: version {store.version()}; {size_mb} MB per operation, median of {runs}")

    # Client(addr) rather than connect(): connect() refuses every daemon >= 0.8.
    legacy = ipfshttpclient.Client(_multiaddr(api_url), timeout=300)

    def legacy_add(data: bytes) -> object:
        return legacy.add(io.BytesIO(data), cid_version=1, raw_leaves=True, pin=True)

    add = _interleaved(size, runs, {"legacy": legacy_add, "ours": store.put})
    blob = os.urandom(size)
    cid = store.put(blob)
    assert store.get(cid) == blob and legacy.cat(cid) == blob
    cat = _interleaved(
        size, runs, {"legacy": lambda _: legacy.cat(cid), "ours": lambda _: store.get(cid)}, fresh=False
    )

    print(f"add  ipfshttpclient.Client : {add['legacy']:7.1f} MB/s")
    print(f"add  KuboStore             : {add['ours']:7.1f} MB/s   ({add['ours'] / add['legacy']:.2f}x)")
    print(f"cat  ipfshttpclient.Client : {cat['legacy']:7.1f} MB/s")
    print(f"get  KuboStore (verified)  : {cat['ours']:7.1f} MB/s   ({cat['ours'] / cat['legacy']:.2f}x)")
    legacy.close()
    store.close()
    return {
        "add_legacy": add["legacy"],
        "add_ours": add["ours"],
        "cat_legacy": cat["legacy"],
        "get_ours": cat["ours"],
    }


def _start_sink() -> tuple[str, Callable[[], None]]:
    """A local HTTP server that reads and drops add bodies: what is left is client-side cost."""
    import hashlib
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from decloud_magics.store.cid import DAG_PB, SHA2_256, ParsedCid

    fake_cid = ParsedCid(1, DAG_PB, SHA2_256, hashlib.sha256(b"sink").digest()).to_v1()

    class Sink(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            size = 0
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                while (n := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                    size += len(self.rfile.read(n))
                    self.rfile.readline()
                self.rfile.readline()
            else:
                left = int(self.headers.get("Content-Length", 0))
                while left > 0:
                    got = len(self.rfile.read(min(left, 1 << 20)))
                    size, left = size + got, left - got
            body = json.dumps({"Name": "data", "Hash": fake_cid, "Size": str(size)}).encode() + b"\n"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server.shutdown


def run_sink(size_mb: int, runs: int) -> None:
    """Client-side cost of an add: both clients against a server that only reads the body."""
    import ipfshttpclient

    url, shutdown = _start_sink()
    size = size_mb * 1_000_000
    store = KuboStore(url, timeout=300)
    legacy = ipfshttpclient.Client(_multiaddr(url), timeout=300)
    add = _interleaved(
        size,
        runs,
        {"legacy": lambda d: legacy.add(io.BytesIO(d), cid_version=1, raw_leaves=True), "ours": store.put},
        fresh=False,
    )
    print(f"client-side cost only (sink server, {size_mb} MB):")
    print(f"add  ipfshttpclient.Client : {add['legacy']:7.1f} MB/s")
    print(f"add  KuboStore             : {add['ours']:7.1f} MB/s   ({add['ours'] / add['legacy']:.2f}x)")
    shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", default="http://127.0.0.1:5001", help="Kubo RPC API URL of a running node")
    parser.add_argument("--start-node", action="store_true", help="start a throwaway js-ipfs node instead")
    parser.add_argument(
        "--tools",
        type=Path,
        default=None,
        help="where js-ipfs is installed (default: DECLOUD_TOOLS or ./.tools)",
    )
    parser.add_argument("--size-mb", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--sink", action="store_true", help="also measure against a body-dropping local server"
    )
    args = parser.parse_args(argv)
    if args.sink:
        run_sink(args.size_mb, args.runs)
    if not args.start_node:
        run(args.api, args.size_mb, args.runs)
        return 0
    from decloud_magics.devnet.ipfs_node import IpfsNode

    tools = args.tools or Path(
        os.environ.get("DECLOUD_TOOLS", Path(__file__).resolve().parents[1] / ".tools")
    )
    with (
        tempfile.TemporaryDirectory(prefix="decloud-bench-ipfs-") as repo,
        IpfsNode(Path(repo), tools_dir=tools) as node,
    ):
        run(node.api_url, args.size_mb, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
