"""KuboStore against a real js-ipfs node, plus a scripted fake node for the lies a real one won't tell.

The real node comes from ``decloud_magics.devnet.ipfs_node`` with the tools in
``.tools`` (or ``DECLOUD_TOOLS``). Without them those tests are skipped, and
the skip says the one command that installs them.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from ipfs_fixture import TOOLS, running_node

from decloud_magics.devnet.ipfs_node import (
    IpfsNode,
    ensure_ipfs_installed,
    ipfs_installed,
    node_binary,
)
from decloud_magics.errors import ConfigError, ContentNotFound, IntegrityError, NetworkUnreachable, StoreError
from decloud_magics.store import KuboStore, LocalStore, cid_for, parse_cid, verify
from decloud_magics.store.base import put_all
from decloud_magics.store.cid import DAG_PB, RAW
from decloud_magics.store.unixfs import CHUNK_SIZE, MAX_LINKS, file_root

MiB = 1024 * 1024


# -- a real js-ipfs node --------------------------------------------------------------


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IpfsNode]:
    yield from running_node(tmp_path_factory.mktemp("ipfs-repo"), "real IPFS node tests")


@pytest.fixture
def kubo(node: IpfsNode) -> Iterator[KuboStore]:
    # Short node-side lookups: js-ipfs waits for peers even offline, so a miss costs the timeout.
    with KuboStore(node.api_url, timeout=3, lookup_timeout=1) as store:
        yield store


@pytest.mark.devnet
def test_node_answers(kubo: KuboStore, node: IpfsNode) -> None:
    assert kubo.ping()
    assert kubo.version()
    assert kubo.id()["ID"]
    assert node.pid is not None and (node.repo / "daemon.log").is_file()


@pytest.mark.devnet
@pytest.mark.parametrize(
    "size",
    [
        0,
        1,
        1000,
        CHUNK_SIZE,  # the last size that is one raw block
        CHUNK_SIZE + 1,  # two leaves under a dag-pb root
        3 * MiB + 7,
        MAX_LINKS * CHUNK_SIZE,  # a full root
        MAX_LINKS * CHUNK_SIZE + 1,  # one leaf more: a second level
        (MAX_LINKS + 1) * CHUNK_SIZE + 5,
    ],
)
def test_node_and_local_store_give_the_same_cid(kubo: KuboStore, tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    cid = kubo.put(data)  # the node's own answer (put raises if it differs from cid_for)
    assert cid == cid_for(data) == LocalStore(tmp_path).put(data)
    assert parse_cid(cid).codec == (RAW if size <= CHUNK_SIZE else DAG_PB)
    assert verify(cid, data) is True  # checked here, whatever the size
    assert kubo.has(cid)
    assert kubo.get(cid) == data


@pytest.mark.devnet
def test_many_contents_go_in_one_add_and_come_back_in_order(kubo: KuboStore, tmp_path: Path) -> None:
    contents = [b"", b"0", os.urandom(300), [b"in ", b"pieces"], os.urandom(CHUNK_SIZE + 1), os.urandom(300)]
    local = LocalStore(tmp_path)
    cids = kubo.put_many(contents)
    assert cids == [local.put(c) for c in contents] and len(set(cids)) == len(contents)
    assert [kubo.get(cid) for cid in cids] == [b"".join(c) if isinstance(c, list) else c for c in contents]
    assert put_all(local, contents) == cids  # a store without put_many stores them one by one


@pytest.mark.devnet
def test_known_cids_from_the_node(kubo: KuboStore) -> None:
    assert kubo.put(b"") == "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    assert kubo.put(b"hello") == "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"


@pytest.mark.devnet
def test_a_tree_built_another_way_is_left_to_the_node(kubo: KuboStore) -> None:
    data = os.urandom(MiB + 1)
    answer = kubo._call(  # one 1 MiB chunk and a 1-byte one: not the tree cid_for builds
        "add", {"cid-version": "1", "raw-leaves": "true", "chunker": f"size-{MiB}", "quieter": "true"},
        body=_multipart(data), headers={"Content-Type": "multipart/form-data; boundary=b0undary"}, what="add",
    ).text  # fmt: skip
    cid = parse_cid(json.loads(answer.splitlines()[-1])["Hash"]).to_v1()
    assert cid != cid_for(data)
    assert verify(cid, data) is False
    assert kubo.get(cid) == data  # the size check from files/stat still guards it


def _multipart(data: bytes) -> bytes:
    head = (
        b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="data"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n"
    )
    return head + data + b"\r\n--b0undary--\r\n"


_IMPORT_JS = """
import { importer } from 'ipfs-unixfs-importer'
import { MemoryBlockstore } from 'blockstore-core/memory'
let text = ''
for await (const piece of process.stdin) text += piece
const { chunk, links, payloads } = JSON.parse(text)
for (const hex of payloads) {
  let root
  const options = { cidVersion: 1, rawLeaves: true, maxChunkSize: chunk, avgChunkSize: chunk, maxChildrenPerNode: links }
  for await (const entry of importer([{ content: Buffer.from(hex, 'hex') }], new MemoryBlockstore(), options)) root = entry
  console.log(root.cid.toString())
}
"""


def test_deep_trees_match_the_js_importer() -> None:
    """Trees three and four levels deep, with tiny chunks and fan-out so they stay small.

    At the real sizes a third level starts past 174 * 174 leaves (7.9 GB),
    too much for a test; the layout code is the same for every size.
    """
    if not ipfs_installed(TOOLS):
        pytest.skip(f"JS-IPFS IS NOT INSTALLED in {TOOLS}: the js importer comparison did NOT run.")
    chunk, links = 4, 3
    sizes = [0, 1, 4, 5, 12, 13, 36, 37, 108, 109, 1000]
    payloads = [os.urandom(n) for n in sizes]
    out = subprocess.run(
        [str(node_binary(TOOLS)), "--input-type=module", "-e", _IMPORT_JS],
        input=json.dumps({"chunk": chunk, "links": links, "payloads": [p.hex() for p in payloads]}),
        capture_output=True, text=True, cwd=TOOLS, timeout=120, check=True,
    )  # fmt: skip
    theirs = out.stdout.split()
    ours = [file_root(p, chunk_size=chunk, max_links=links).to_v1() for p in payloads]
    assert ours == theirs


@pytest.mark.devnet
def test_missing_content(node: IpfsNode) -> None:
    kubo = KuboStore(node.api_url, timeout=1, lookup_timeout=0.5)
    missing = cid_for(b"nobody stored this " + os.urandom(8))
    assert not kubo.has(missing)
    with pytest.raises(ContentNotFound, match="found no copy"):
        kubo.get(missing)
    with pytest.raises(ContentNotFound):
        kubo.pin(missing)


@pytest.mark.devnet
def test_pin(kubo: KuboStore) -> None:
    cid = kubo.put(b"keep me " + os.urandom(8))
    kubo.pin(cid)  # already pinned by add: pinning again is harmless
    kubo.pin(cid)
    pins = kubo._call("pin/ls", {"arg": cid}, what="list pins").json()
    assert cid in json.dumps(pins) or parse_cid(cid).to_v1() in {
        parse_cid(k).to_v1() for k in pins.get("Keys", {})
    }


@pytest.mark.devnet
def test_threads_share_one_store(kubo: KuboStore) -> None:
    blobs = [os.urandom(20_000 + i) for i in range(12)]
    results: dict[int, str] = {}

    def work(i: int) -> None:
        results[i] = kubo.put(blobs[i])
        assert kubo.get(results[i]) == blobs[i]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(blobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(len(blobs))] == [cid_for(b) for b in blobs]


@pytest.mark.devnet
def test_stopped_node_is_unreachable_then_restart_works(node: IpfsNode) -> None:
    store = KuboStore(node.api_url, timeout=5, retries=2, backoff=0.05)
    data = os.urandom(4096)
    cid = store.put(data)
    pgid = node.pid
    assert pgid is not None
    node.stop()
    try:
        with pytest.raises(ProcessLookupError):
            os.killpg(pgid, 0)  # nothing of the group is left
        assert node.pid is None
        assert store.ping() is False
        expected = (
            f"The IPFS node at {node.api_url} did not answer: start it (decloud devnet up) "
            "or pass --ipfs-api with a running node's URL."
        )
        for call in (lambda: store.put(b"x"), lambda: store.get(cid), lambda: store.has(cid)):
            with pytest.raises(NetworkUnreachable) as info:
                call()
            assert str(info.value) == expected
    finally:
        node.start(timeout=120)
    assert store.get(cid) == data  # same repo, same port: the old session reconnects
    assert store.put(b"after restart") == cid_for(b"after restart")


@pytest.mark.devnet
def test_ensure_installed_is_a_no_op_when_present(node: IpfsNode) -> None:
    said: list[str] = []
    cli = ensure_ipfs_installed(TOOLS, progress=said.append)
    assert cli.is_file() and said == []


def test_start_without_tools_names_the_install_command(tmp_path: Path) -> None:
    n = IpfsNode(tmp_path / "repo", tools_dir=tmp_path / "no-tools")
    with pytest.raises(ConfigError, match="python -m decloud_magics.devnet.ipfs_node install") as info:
        n.start()
    assert str(tmp_path / "no-tools") in str(info.value)
    assert n.pid is None


# -- a scripted fake node ----------------------------------------------------------------


class _Script:
    """What the fake node answers, one response per request, in order (the last repeats)."""

    def __init__(self) -> None:
        self.responses: list[tuple[int, bytes]] = []
        self.requests: list[tuple[str, bytes]] = []


@pytest.fixture
def fake() -> Iterator[tuple[str, _Script]]:
    script = _Script()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            script.requests.append((self.path, body))
            status, payload = script.responses.pop(0) if len(script.responses) > 1 else script.responses[0]
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", script
    finally:
        server.shutdown()
        server.server_close()


def _added(cid: str) -> tuple[int, bytes]:
    return 200, json.dumps({"Name": "data", "Hash": cid, "Size": "1"}).encode() + b"\n"


def test_put_refuses_a_node_that_names_content_wrongly(fake: tuple[str, _Script]) -> None:
    url, script = fake
    script.responses = [_added(cid_for(b"something else"))]
    with pytest.raises(IntegrityError, match="misconfigured or corrupting"):
        KuboStore(url).put(b"mine")
    path, body = script.requests[0]
    assert path.startswith("/api/v0/add?") and "chunker=size-262144" in path and "raw-leaves=true" in path
    assert b"Content-Type: application/octet-stream" in body and b"mine" in body


def test_a_batch_is_one_request_and_a_short_answer_is_refused(fake: tuple[str, _Script]) -> None:
    url, script = fake
    contents = [b"one", b"two", b"three"]
    lines = [json.dumps({"Name": f"f{i}", "Hash": cid_for(c)}) for i, c in enumerate(contents)]
    script.responses = [(200, "\n".join(lines).encode() + b"\n")]
    assert KuboStore(url).put_many(contents) == [cid_for(c) for c in contents]
    assert len(script.requests) == 1 and script.requests[0][1].count(b"Content-Type: application/octet-stream") == 3
    script.responses = [(200, "\n".join(lines[:2]).encode() + b"\n")]
    with pytest.raises(StoreError, match="accepted 3 contents but named 2"):
        KuboStore(url).put_many(contents)


def test_put_accepts_base58_cidv1(fake: tuple[str, _Script]) -> None:
    cid_lib = pytest.importorskip("cid")
    url, script = fake
    script.responses = [_added(cid_lib.make_cid(cid_for(b"mine")).encode("base58btc").decode())]
    assert KuboStore(url).put(b"mine") == cid_for(b"mine")


def test_get_refuses_bytes_that_do_not_match(fake: tuple[str, _Script]) -> None:
    url, script = fake
    script.responses = [(200, b"tampered")]
    with pytest.raises(IntegrityError, match="do not match"):
        KuboStore(url).get(cid_for(b"original"))
    assert script.requests[0][0].startswith("/api/v0/block/get?")  # one raw block: no UnixFS reader


def test_server_faults_are_retried(fake: tuple[str, _Script]) -> None:
    url, script = fake
    script.responses = [(502, b"bad gateway"), (503, b""), (200, b"original")]
    assert KuboStore(url, retries=3, backoff=0.01).get(cid_for(b"original")) == b"original"
    assert len(script.requests) == 3


def test_node_errors_are_not_retried(fake: tuple[str, _Script]) -> None:
    url, script = fake
    script.responses = [(500, b'{"Message":"permission denied","Code":0,"Type":"error"}')]
    with pytest.raises(StoreError, match="permission denied"):
        KuboStore(url, retries=3, backoff=0.01).pin(cid_for(b"x"))
    assert len(script.requests) == 1


def test_persistent_server_fault_gives_up(fake: tuple[str, _Script]) -> None:
    url, script = fake
    script.responses = [(502, b"")]
    with pytest.raises(StoreError, match="HTTP 502 after 3 tries"):
        KuboStore(url, retries=2, backoff=0.01).version()


def test_get_catches_a_multi_block_answer_cut_short(fake: tuple[str, _Script]) -> None:
    url, script = fake
    tree = "bafybeihulkibtmexsx677eymro5wztr3bsd7ryhzzwblwxurugi4fgmq2u"  # a 3 MB file as js-ipfs chunks it
    script.responses = [(200, b"x" * 1000), (200, json.dumps({"Type": "file", "Size": 3_000_000}).encode())]
    with pytest.raises(IntegrityError, match="sent 1000 of the 3000000 bytes"):
        KuboStore(url).get(tree)
    assert [p.split("?")[0] for p, _ in script.requests] == ["/api/v0/cat", "/api/v0/files/stat"]


def test_put_checks_the_tree_cid_of_large_content(fake: tuple[str, _Script]) -> None:
    url, script = fake
    data = os.urandom(CHUNK_SIZE + 1)
    script.responses = [_added(cid_for(data[:-1] + b"!"))]
    with pytest.raises(IntegrityError, match="misconfigured or corrupting"):
        KuboStore(url).put(data)
    script.responses = [_added(cid_for(data))]
    assert KuboStore(url).put(data) == cid_for(data)


def test_get_checks_a_tree_itself_without_asking_for_its_size(fake: tuple[str, _Script]) -> None:
    url, script = fake
    data = os.urandom(2 * CHUNK_SIZE + 3)
    script.responses = [(200, data)]
    assert KuboStore(url).get(cid_for(data)) == data
    assert [p.split("?")[0] for p, _ in script.requests] == ["/api/v0/cat"]
