"""CIDs, the Store protocol and the on-disk blockstore (no IPFS node needed)."""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest

from decloud_magics.buffers import LARGE
from decloud_magics.errors import ContentNotFound, IntegrityError, NetworkUnreachable, StoreError
from decloud_magics.store import (
    KuboStore,
    LocalStore,
    Store,
    cid_for,
    cid_from_sha256,
    digest_of,
    is_raw_sha256,
    parse_cid,
    unixfs,
    verify,
)
from decloud_magics.store.cid import DAG_PB, RAW, SHA2_256, ParsedCid
from decloud_magics.store.kubo import _http_url
from decloud_magics.store.unixfs import CHUNK_SIZE, MAX_LINKS, file_root

ROOT = Path(__file__).resolve().parents[1]

# What `ipfs add --cid-version=1 --raw-leaves` prints for these bytes. The empty
# and "hello world\n" ones appear in IPFS docs and fixtures; "hello" was also
# returned by a js-ipfs 0.66.1 node in tests/test_kubo_store.py.
KNOWN = {
    b"": "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
    b"hello world\n": "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4",
    b"hello": "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq",
}
HELLO_V0 = "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"  # "hello world\n" as a dag-pb file

# Larger than one chunk: what a js-ipfs 0.66.1 node printed for `add --cid-version=1
# --raw-leaves` of shake_256(b"decloud") bytes (tests/test_kubo_store.py compares live).
KNOWN_TREES = {
    CHUNK_SIZE + 1: "bafybeie6y7ucwxchsaai2aoobglmmwhzdwxbpj6npnskol3j4berfslovm",
    3 * 1024 * 1024 + 7: "bafybeigz2v7hmgmf2qlfa2wvsll5omtmofjvunh3z3kgltjluqoatkzlha",
    (MAX_LINKS + 1) * CHUNK_SIZE + 5: "bafybeia37h4y5nx7ankniujjzqdi2ftutnfzm7pkfv6f4ou756qdnd2kky",
}


def pattern(size: int) -> bytes:
    return hashlib.shake_256(b"decloud").digest(size)


# -- CIDs -----------------------------------------------------------------------


@pytest.mark.parametrize("data,expected", KNOWN.items())
def test_cid_for_matches_ipfs(data: bytes, expected: str) -> None:
    assert cid_for(data) == expected


@pytest.mark.parametrize("data", [*KNOWN, b"\x00" * 1000, os.urandom(4096)])
def test_cid_for_agrees_with_py_cid(data: bytes) -> None:
    cid_lib = pytest.importorskip("cid")
    multihash = pytest.importorskip("multihash")
    reference = cid_lib.make_cid(1, "raw", multihash.digest(data, "sha2-256").encode())
    assert cid_for(data) == reference.encode("base32").decode()
    parsed = parse_cid(cid_for(data))
    assert parsed == ParsedCid(1, RAW, SHA2_256, hashlib.sha256(data).digest())


@pytest.mark.parametrize("size", list(KNOWN_TREES))
def test_cid_for_large_content_is_the_tree_root_ipfs_gives(size: int) -> None:
    cid = cid_for(pattern(size))
    assert cid == KNOWN_TREES[size]
    assert parse_cid(cid).codec == DAG_PB and not is_raw_sha256(cid)


def test_cid_for_one_chunk_is_a_raw_block() -> None:
    data = pattern(CHUNK_SIZE)
    assert cid_for(data) == cid_from_sha256(hashlib.sha256(data).digest())


def test_leaves_hash_the_same_on_any_number_of_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    data = pattern(5 * 1024 * 1024 + 3)  # past the size where threads start
    alone = [hashlib.sha256(data[i : i + CHUNK_SIZE]).digest() for i in range(0, len(data), CHUNK_SIZE)]
    for cores in (1, 2, 3, 64):
        monkeypatch.setattr(unixfs, "_cores", lambda cores=cores: cores)
        assert unixfs.leaf_digests(unixfs.chunked([memoryview(data)])) == alone
        assert file_root(data).to_v1() == cid_for(data)
    with pytest.raises(ValueError):
        file_root(data, max_links=1)  # a level of one-link nodes would never reach a root


@pytest.mark.parametrize("size", [100, CHUNK_SIZE, 3 * CHUNK_SIZE + 5, 5 * 1024 * 1024 + 3])
def test_a_payload_in_pieces_has_the_cid_of_its_bytes_end_to_end(size: int) -> None:
    data = pattern(size)
    rng = random.Random(size)
    cuts = sorted(
        {0, size, *(rng.randrange(size) for _ in range(7)), CHUNK_SIZE % size, (2 * CHUNK_SIZE - 1) % size}
    )
    pieces = [data[a:b] for a, b in itertools.pairwise(cuts)] + [b""]
    assert file_root(pieces) == file_root(data)
    assert b"".join(bytes(c) for c in unixfs.chunked([memoryview(p) for p in pieces])) == data
    store_root = Path(tempfile.mkdtemp())
    try:
        assert LocalStore(store_root).put(pieces) == cid_for(data)
        assert LocalStore(store_root).get(cid_for(data)) == data
    finally:
        shutil.rmtree(store_root)


def test_parse_cid_v0_and_other_encodings() -> None:
    cid_lib = pytest.importorskip("cid")
    v0 = parse_cid(HELLO_V0)
    assert (v0.version, v0.codec, v0.hash_code, len(v0.digest)) == (0, DAG_PB, SHA2_256, 32)
    assert v0.multihash() == bytes(cid_lib.make_cid(HELLO_V0).multihash)
    assert v0.to_v1() == cid_lib.make_cid(HELLO_V0).to_v1().encode("base32").decode()
    assert not is_raw_sha256(HELLO_V0)
    raw = KNOWN[b"hello"]
    z = cid_lib.make_cid(raw).encode("base58btc").decode()  # js-ipfs spells CIDv1 this way
    assert z.startswith("z") and parse_cid(z).to_v1() == raw
    assert parse_cid(raw.upper()).to_v1() == raw
    assert parse_cid(" " + raw + "\n").to_v1() == raw


def test_digest_and_raw_check() -> None:
    assert digest_of(cid_for(b"hello")) == hashlib.sha256(b"hello").digest()
    assert is_raw_sha256(cid_for(b"x"))
    assert not is_raw_sha256("not a cid")


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "hello",
        "Qmfoo",
        "bafkxyz",
        "b" + "a" * 20,
        "zzzz",
        KNOWN[b""][:-4],
        "Qm" + "0" * 44,
        "x" * 2000,
        None,
        42,
    ],
)
def test_parse_cid_refuses_garbage_with_a_sentence(bad: object) -> None:
    with pytest.raises(StoreError) as info:
        parse_cid(bad)  # type: ignore[arg-type]
    message = str(info.value)
    assert message.endswith(".") and len(message) < 300


def test_verify() -> None:
    cid = cid_for(b"payload")
    assert verify(cid, b"payload") is True
    assert verify(cid, memoryview(b"payload")) is True
    with pytest.raises(IntegrityError, match="do not match"):
        verify(cid, b"payl0ad")
    # a tree of raw leaves is rebuilt and checked here; a CIDv0 tree (leaves that are not raw) is left to the node
    big = pattern(CHUNK_SIZE + 1)
    assert verify(cid_for(big), big) is True
    assert verify(cid_for(big), bytearray(big)) is True
    assert verify(HELLO_V0, b"anything") is False
    # a root that differs could be another chunker's tree of the same bytes: the node's word, then its size
    assert verify(cid_for(big), big[:-1] + b"!") is False
    cbor = ParsedCid(1, 0x71, SHA2_256, b"\x01" * 32).to_v1()
    with pytest.raises(StoreError, match="dag-cbor"):
        verify(cbor, b"")


def test_import_is_cheap() -> None:
    code = (
        "import sys, decloud_magics.store, decloud_magics.devnet\n"
        "bad = [m for m in ('requests', 'web3', 'IPython', 'ipfshttpclient') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# -- LocalStore -----------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "blocks")


def test_local_roundtrip(store: LocalStore) -> None:
    assert isinstance(store, Store)
    for data, known in KNOWN.items():
        cid = store.put(data)
        assert cid == known
        assert store.has(cid)
        assert store.get(cid) == data
        store.pin(cid)
    assert store.put(bytearray(b"hello")) == store.put(memoryview(b"hello")) == KNOWN[b"hello"]


def test_local_layout_is_flatfs_like(store: LocalStore) -> None:
    cid = store.put(b"hello")
    path = store.path_for(cid)
    assert path.parent.name == cid[-3:-1] and path.name == cid
    assert path.read_bytes() == b"hello"


def test_local_put_is_idempotent_and_leaves_no_temp_files(store: LocalStore) -> None:
    cid = store.put(b"same")
    mtime = store.path_for(cid).stat().st_mtime_ns
    assert store.put(b"same") == cid
    assert store.path_for(cid).stat().st_mtime_ns == mtime  # not rewritten
    assert [p.name for p in store.root.rglob("*") if p.is_file()] == [cid]


def test_local_missing_block(store: LocalStore) -> None:
    cid = cid_for(b"never stored")
    assert not store.has(cid)
    with pytest.raises(ContentNotFound, match="has no block") as info:
        store.get(cid)
    assert isinstance(info.value, KeyError)
    with pytest.raises(ContentNotFound):
        store.pin(cid)
    # a CIDv0 tree from a node (leaves that are not raw) is simply not something this store holds
    assert not store.has(HELLO_V0)
    with pytest.raises(ContentNotFound, match="has no block"):
        store.get(HELLO_V0)
    cbor = ParsedCid(1, 0x71, SHA2_256, b"\x01" * 32).to_v1()
    with pytest.raises(ContentNotFound, match="raw and dag-pb"):
        store.get(cbor)
    with pytest.raises(StoreError, match="not a CID"):
        store.get("../../etc/passwd")


@pytest.mark.parametrize("size", [100_000, 3 * 1024 * 1024, LARGE + 1])
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_local_corrupted_block_is_refused_then_repaired(store: LocalStore, damage: str, size: int) -> None:
    data = os.urandom(size)
    cid = store.put(data)
    path = store.path_for(cid)
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[5000] ^= 0xFF
    else:
        del raw[-10:]
    path.write_bytes(raw)
    with pytest.raises(IntegrityError, match="damaged"):
        store.get(cid)
    assert not store.has(cid)  # moved aside, so the next put writes it afresh
    assert store.put(data) == cid
    assert store.get(cid) == data


def test_local_concurrent_puts_from_threads(store: LocalStore) -> None:
    same = os.urandom(2_000_000)
    others = [os.urandom(50_000) for _ in range(16)]
    barrier = threading.Barrier(8)

    def put_same(_: int) -> str:
        barrier.wait()
        return store.put(same)

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(put_same, range(8))) == {cid_for(same)}
        cids = list(pool.map(store.put, others))
    assert store.get(cid_for(same)) == same
    assert [store.get(c) for c in cids] == others
    assert not [p for p in store.root.rglob(".tmp-*")]


def _put_in_process(args: tuple[str, int]) -> str:
    root, seed = args
    data = hashlib.sha256(b"shared").digest() * 40_000 if seed < 0 else os.urandom(10_000 + seed)
    return LocalStore(Path(root)).put(data)


def test_local_concurrent_puts_from_processes(store: LocalStore) -> None:
    with ProcessPoolExecutor(4) as pool:
        cids = list(
            pool.map(_put_in_process, [(str(store.root), -1)] * 6 + [(str(store.root), i) for i in range(6)])
        )
    assert len(set(cids[:6])) == 1
    assert store.get(cids[0]) == hashlib.sha256(b"shared").digest() * 40_000
    for cid in cids:
        store.get(cid)  # verified read of every block
    assert not [p for p in store.root.rglob(".tmp-*")]


def test_local_large_roundtrip(store: LocalStore) -> None:
    data = os.urandom(20 * 1024 * 1024)
    cid = store.put(data)
    assert cid == cid_for(data) and cid.startswith("bafybei")
    assert store.get(cid) == data
    assert store.path_for(cid).read_bytes() == data  # one file holds the whole payload


def test_local_large_get_is_a_read_only_mapping_that_outlives_the_file(store: LocalStore) -> None:
    data = os.urandom(LARGE + 1)
    cid = store.put(data)
    got = store.get(cid)
    assert isinstance(got, memoryview) and got.readonly
    store.path_for(cid).unlink()
    assert store.put(data) == cid  # another writer puts it again: a new file renamed into place
    assert got == data
    with pytest.raises(TypeError):
        got[0] = 0


@pytest.mark.parametrize("size", list(KNOWN_TREES))
def test_local_store_names_large_content_as_ipfs_does(store: LocalStore, size: int) -> None:
    assert store.put(pattern(size)) == KNOWN_TREES[size]
    assert store.get(KNOWN_TREES[size]) == pattern(size)


def test_local_reads_a_large_block_stored_whole_under_its_raw_cid(store: LocalStore) -> None:
    data = pattern(3 * 1024 * 1024)  # as stores wrote it before large content was chunked
    raw = cid_from_sha256(hashlib.sha256(data).digest())
    store.path_for(raw).parent.mkdir(parents=True, exist_ok=True)
    store.path_for(raw).write_bytes(data)
    assert store.get(raw) == data
    store.path_for(raw).write_bytes(data[:-1] + b"!")
    with pytest.raises(IntegrityError, match="damaged"):
        store.get(raw)


def test_local_default_root_is_in_decloud_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DECLOUD_HOME", str(tmp_path / "home"))
    assert LocalStore().root == tmp_path / "home" / "blocks"


# -- KuboStore without a node -------------------------------------------------------


def test_kubo_store_down_node_says_what_to_do() -> None:
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    kubo = KuboStore(url, retries=2, backoff=0.01)
    assert isinstance(kubo, Store)
    assert kubo.ping() is False
    expected = (
        f"The IPFS node at {url} did not answer: start it (decloud devnet up) "
        "or pass --ipfs-api with a running node's URL."
    )
    for call in (lambda: kubo.put(b"x"), lambda: kubo.get(KNOWN[b""]), kubo.version):
        with pytest.raises(NetworkUnreachable) as info:
            call()
        assert str(info.value) == expected


@pytest.mark.parametrize(
    "given,url",
    [
        ("http://127.0.0.1:5001", "http://127.0.0.1:5001"),
        ("http://127.0.0.1:5001/", "http://127.0.0.1:5001"),
        ("http://node:5001/api/v0", "http://node:5001"),
        ("127.0.0.1:5001", "http://127.0.0.1:5001"),
        ("/ip4/127.0.0.1/tcp/5001", "http://127.0.0.1:5001"),
        ("/dns4/ipfs.example/tcp/443/https", "https://ipfs.example:443"),
        ("/ip6/::1/tcp/5001/http", "http://[::1]:5001"),
    ],
)
def test_kubo_api_url_forms(given: str, url: str) -> None:
    assert _http_url(given) == url


def test_kubo_api_url_refuses_nonsense() -> None:
    with pytest.raises(StoreError, match="not an IPFS API address"):
        _http_url("ftp://x")
