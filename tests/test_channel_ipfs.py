"""IpfsPubsubChannel against a real js-ipfs node, plus the wire format on its own.

The node comes from ``decloud_magics.devnet.ipfs_node`` with the tools in
``.tools`` (or ``DECLOUD_TOOLS``), on ports of its own; without the tools the
node tests are skipped, and the skip says the one command that installs them.
Every test uses a topic of its own, so one test's messages never reach another.
No assertion here is about timing; every wait has a timeout.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from ipfs_fixture import running_node

from decloud_magics.channel import NullChannel
from decloud_magics.channel_ipfs import (
    MAX_MESSAGE_BYTES,
    IpfsPubsubChannel,
    _lines,
    decode_message,
    encode_message,
    market_topic,
    multibase_decode,
    multibase_encode,
    pubsub_available,
)
from decloud_magics.channel_signing import sign_message, signed_by
from decloud_magics.devnet.ipfs_node import IpfsNode
from decloud_magics.keys import PrivateKey

WAIT = 30.0  # seconds any single delivery may take before a test gives up
W_KEY = PrivateKey("0x" + "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d", "a test")
W = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"  # W_KEY's address
M_KEY = PrivateKey("0x" + "5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a", "a test")

Message = tuple[int, str, dict[str, Any]]


# -- the wire format, no node needed ------------------------------------------------------


def test_multibase_spells_topics_as_the_node_does() -> None:
    # What js-ipfs 0.66.1 lists in pubsub/ls after a subscription to "decloud/test".
    assert multibase_encode(b"decloud/test") == "uZGVjbG91ZC90ZXN0"
    for raw in (b"", b"a", b"ab", b"abc", os.urandom(100)):
        assert multibase_decode(multibase_encode(raw)) == raw
    for bad in ("", "ZGVjbG91ZA", "u!!!", "uä", "u+/+/", "uZ", "mZGVjbG91ZA=="):
        with pytest.raises(ValueError):
            multibase_decode(bad)


def test_topic_is_one_per_contract_whatever_the_spelling() -> None:
    contract = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
    assert market_topic(31337, contract) == market_topic(31337, contract.lower())
    assert market_topic(31337, contract) == f"decloud/31337/{contract.lower()}/live"
    assert market_topic(1, contract) != market_topic(31337, contract)


def test_a_message_round_trips_and_long_lines_are_cut_to_the_cap() -> None:
    body = encode_message(7, "stdout", {"line": "hello", "worker": "0xabc"})
    assert body is not None and json.loads(body) == {
        "v": 1, "task": 7, "kind": "stdout", "data": {"line": "hello", "worker": "0xabc"},
    }  # fmt: skip
    assert decode_message(body) == (7, "stdout", {"line": "hello", "worker": "0xabc"})
    long = encode_message(7, "stdout", {"line": "x" * 100_000, "worker": "0xabc"})
    assert long is not None and len(long) <= MAX_MESSAGE_BYTES
    decoded = decode_message(long)
    assert decoded is not None and decoded[2]["line"].startswith("xxx") and decoded[2]["line"].endswith("…")
    assert decoded[2]["worker"] == "0xabc"
    assert encode_message(7, "stdout", {f"k{i}": i for i in range(5000)}) is None  # cannot be cut to fit


def _msg(**fields: Any) -> bytes:
    return json.dumps({"v": 1, "task": 3, "kind": "note", "data": {"message": "hi"}, **fields}).encode()


MALFORMED = {
    "not json": b"not json at all",
    "not utf-8": b"\xff\xfe\x00{",
    "a list": b"[1, 2, 3]",
    "no version": json.dumps({"task": 3, "kind": "note", "data": {}}).encode(),
    "another version": _msg(v=2),
    "negative task": _msg(task=-1),
    "task as text": _msg(task="3"),
    "task as bool": _msg(task=True),
    "huge task": _msg(task=2**300),
    "kind not text": _msg(kind=5),
    "empty kind": _msg(kind=""),
    "long kind": _msg(kind="k" * 100),
    "data a list": _msg(data=["line"]),
    "too big": _msg(data={"line": "x" * (MAX_MESSAGE_BYTES + 10)}),
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "deep nesting within the cap": b"[" * 5_000 + b"]" * 5_000,  # would overflow the C stack if parsed
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_messages_decode_to_nothing(raw: bytes) -> None:
    assert decode_message(raw) is None


def test_data_keeps_only_plain_values() -> None:
    raw = _msg(data={"line": "ok", "n": 2, "x": 1.5, "ok": True, "none": None, "nested": {"a": 1},
                     "list": [1], "inf": float("inf")})  # fmt: skip
    assert decode_message(raw) == (3, "note", {"line": "ok", "n": 2, "x": 1.5, "ok": True, "none": None})


def test_an_overlong_line_in_the_stream_is_skipped_without_being_kept() -> None:
    chunks = [b'{"a":1}\n{"b"', b":2}\n" + b"x" * 50, b"x" * 50, b"x" * 50 + b"\n", b'{"c":3}\n\n']
    assert list(_lines(chunks, cap=40)) == [b'{"a":1}', b'{"b":2}', None, b'{"c":3}']


# -- a real js-ipfs node --------------------------------------------------------------------


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IpfsNode]:
    yield from running_node(tmp_path_factory.mktemp("ipfs-pubsub-repo"), "IPFS pubsub channel tests")


@pytest.fixture
def topic() -> str:
    return f"decloud-test/{uuid.uuid4().hex}/live"


class Inbox:
    """A listener that keeps what it hears, for waits with a timeout."""

    def __init__(self) -> None:
        self.messages: queue.Queue[Message] = queue.Queue()

    def __call__(self, task_id: int, kind: str, data: dict[str, Any]) -> None:
        self.messages.put((task_id, kind, data))

    def take(self, n: int, timeout: float = WAIT) -> list[Message]:
        """The next ``n`` messages that are not probes."""
        got: list[Message] = []
        end = time.monotonic() + timeout
        while len(got) < n:
            try:
                message = self.messages.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"heard {len(got)} of {n} messages within {timeout:g} s: {got}"
                ) from None
            if message[1] != "probe":
                got.append(message)
        return got

    def quiet(self, wait: float = 1.0) -> list[Message]:
        """What else arrives within ``wait`` seconds (for checks that nothing more does)."""
        time.sleep(wait)
        out = []
        while not self.messages.empty():
            out.append(self.messages.get_nowait())
        return [m for m in out if m[1] != "probe"]


def until_heard(publisher: IpfsPubsubChannel, inbox: Inbox, timeout: float = 90.0) -> None:
    """Probe until the subscriber hears one: the node greets a subscription a moment before it is live."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        publisher.publish(0, "probe", {})
        try:
            while True:
                if inbox.messages.get(timeout=0.3)[1] == "probe":
                    inbox.quiet(0.3)  # late probes out of the way
                    return
        except queue.Empty:
            continue
    raise AssertionError(f"no probe was heard within {timeout:g} s")


def raw_publish(api_url: str, topic: str, payload: bytes) -> None:
    """Publish bytes that did not come from a channel: what anyone on the topic can do."""
    import requests

    resp = requests.post(
        f"{api_url}/api/v0/pubsub/pub",
        params={"arg": multibase_encode(topic.encode())},
        files={"file": ("message", payload, "application/octet-stream")},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text


def hearing(publisher: IpfsPubsubChannel, subscriber: IpfsPubsubChannel) -> Inbox:
    """An inbox subscribed on ``subscriber`` that has heard ``publisher`` already."""
    inbox = Inbox()
    subscriber.subscribe(inbox)
    until_heard(publisher, inbox)
    return inbox


@pytest.fixture
def pair(node: IpfsNode, topic: str) -> Iterator[tuple[IpfsPubsubChannel, IpfsPubsubChannel]]:
    """A worker's channel (signing as ``W``) and a client's, on one topic of the module's node."""
    publisher = IpfsPubsubChannel(node.api_url, topic, signer=W_KEY)
    subscriber = IpfsPubsubChannel(node.api_url, topic)
    yield publisher, subscriber
    publisher.close()
    subscriber.close()


@pytest.mark.devnet
def test_the_node_offers_pubsub(node: IpfsNode) -> None:
    assert pubsub_available(node.api_url) is True


@pytest.mark.devnet
def test_publish_and_subscribe_round_trip_in_order(pair: tuple[IpfsPubsubChannel, IpfsPubsubChannel]) -> None:
    publisher, subscriber = pair
    inbox = hearing(publisher, subscriber)
    assert subscriber.wait_subscribed(WAIT)
    publisher.publish(41, "running", {"worker": W})
    for i in range(20):
        publisher.publish(41, "stdout", {"line": f"line {i}", "worker": W})
    publisher.publish(42, "note", {"message": "gave the task back"})
    got = inbox.take(22)
    assert got[0] == (41, "running", {"worker": W})
    assert got[1:21] == [(41, "stdout", {"line": f"line {i}", "worker": W}) for i in range(20)]
    assert got[21] == (42, "note", {"message": "gave the task back"})
    assert publisher.flush(WAIT) and publisher.counts["dropped"] == 0


@pytest.mark.devnet
def test_malformed_messages_are_ignored_and_a_broken_listener_harms_no_one(
    node: IpfsNode, topic: str, pair: tuple[IpfsPubsubChannel, IpfsPubsubChannel]
) -> None:
    publisher, subscriber = pair
    inbox = Inbox()

    def broken(task_id: int, kind: str, data: dict[str, Any]) -> None:
        raise RuntimeError("a listener with a bug")

    subscriber.subscribe(broken)
    subscriber.subscribe(inbox)
    until_heard(publisher, inbox)
    rejected = subscriber.counts["rejected"]
    for payload in MALFORMED.values():
        if len(payload) < 1_000_000:  # the node's own message limit is about 1 MB
            raw_publish(node.api_url, topic, payload)
    raw_publish(node.api_url, topic, _msg(data={"message": "after the junk", "nested": {"x": 1}}))
    assert inbox.take(1) == [(3, "note", {"message": "after the junk"})]
    assert inbox.quiet() == []
    assert subscriber.counts["rejected"] - rejected == sum(len(p) < 1_000_000 for p in MALFORMED.values())


@pytest.mark.devnet
def test_unsubscribe_stops_the_reader_and_a_new_subscribe_starts_afresh(
    pair: tuple[IpfsPubsubChannel, IpfsPubsubChannel],
) -> None:
    publisher, subscriber = pair
    first, second = Inbox(), Inbox()
    unsubscribe_first = subscriber.subscribe(first)
    unsubscribe_second = subscriber.subscribe(second)
    until_heard(publisher, first)
    reader = subscriber._reader
    assert reader is not None and reader.thread is not None and reader.thread.is_alive()
    unsubscribe_first()
    assert reader.thread.is_alive(), "a listener is left: the reader must keep going"
    publisher.publish(5, "stdout", {"line": "only the second hears this"})
    assert second.take(1) == [(5, "stdout", {"line": "only the second hears this"})]
    unsubscribe_second()
    assert not reader.thread.is_alive() and subscriber._reader is None
    unsubscribe_second()  # twice is harmless

    third = Inbox()
    subscriber.subscribe(third)
    until_heard(publisher, third)
    assert subscriber._reader is not None and subscriber._reader is not reader


@pytest.mark.devnet
def test_publishing_while_nobody_listens_is_no_outage(
    node: IpfsNode, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="decloud.channel")
    publisher = IpfsPubsubChannel(node.api_url, topic)  # a worker whose notebook was closed
    try:
        for i in range(5):
            publisher.publish(6, "stdout", {"line": f"nobody hears {i}"})
        assert publisher.flush(WAIT)
        assert publisher.counts["unheard"] + publisher.counts["published"] == 5
        assert _logged(caplog, "") == []
    finally:
        publisher.close()


@pytest.mark.devnet
def test_a_silent_subscription_is_renewed_without_a_word(
    node: IpfsNode, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="decloud.channel")
    publisher = IpfsPubsubChannel(node.api_url, topic)
    subscriber = IpfsPubsubChannel(node.api_url, topic, idle_timeout=0.5)
    inbox = Inbox()
    try:
        subscriber.subscribe(inbox)
        until_heard(publisher, inbox)
        time.sleep(2.0)  # several idle timeouts, each followed by a fresh subscription
        until_heard(publisher, inbox)
        publisher.publish(8, "stdout", {"line": "still here"})
        assert inbox.take(1) == [(8, "stdout", {"line": "still here"})]
        assert _logged(caplog, "") == [], "silence is not an outage"
    finally:
        publisher.close()
        subscriber.close()


@pytest.mark.devnet
def test_a_stopped_node_never_troubles_the_worker_and_the_subscriber_comes_back(
    node: IpfsNode, pair: tuple[IpfsPubsubChannel, IpfsPubsubChannel], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="decloud.channel")
    publisher, subscriber = pair
    inbox = hearing(publisher, subscriber)
    node.stop()
    try:
        for i in range(300):  # a worker printing while its node is gone
            publisher.publish(9, "stdout", {"line": f"into the void {i}"})
        assert publisher.flush(WAIT)
        assert publisher.counts["dropped"] >= 300
        end = time.monotonic() + WAIT
        while subscriber.wait_subscribed(0) or not _logged(caplog, "cannot subscribe"):
            assert time.monotonic() < end, "the subscriber did not notice the node was gone"
            time.sleep(0.1)
    finally:
        node.start(timeout=120)
    assert len(_logged(caplog, "cannot publish")) == 1, "an outage is logged once, not per message"
    assert len(_logged(caplog, "cannot subscribe")) == 1

    assert subscriber.wait_subscribed(90), "the subscriber did not reconnect to the restarted node"
    until_heard(publisher, inbox)
    publisher.publish(10, "stdout", {"line": "back again"})
    assert inbox.take(1) == [(10, "stdout", {"line": "back again"})]
    assert _logged(caplog, "publishing to the IPFS node") and _logged(caplog, "subscribed at the IPFS node")


def _logged(caplog: pytest.LogCaptureFixture, words: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "decloud.channel" and words in r.getMessage()]


# -- connect_rpc picks the channel ------------------------------------------------------------


class _NoPubsubKubo(BaseHTTPRequestHandler):
    """Answers like Kubo started without --enable-pubsub-experiment (its words, verbatim)."""

    def do_POST(self) -> None:  # the name http.server calls
        body = json.dumps({
            "Message": "experimental pubsub feature not enabled, run daemon with --enable-pubsub-experiment to use.",
            "Code": 0, "Type": "error",
        }).encode()  # fmt: skip
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _connect(ipfs_api: str, chain_id: int | None = 31337):  # type: ignore[no-untyped-def]
    from decloud_magics.connection import connect_rpc
    from decloud_magics.keys import PrivateKey
    from decloud_magics.networks import NetworkConfig

    # Nothing answers on port 9: connecting must not need the chain.
    config = NetworkConfig(name="pubsub-test", rpc_url="http://127.0.0.1:9", contract="0x" + "ab" * 20,
                           ipfs_api=ipfs_api, chain_id=chain_id)  # fmt: skip
    return connect_rpc(config, PrivateKey("0x" + "5" * 64, "a test key"))


@pytest.mark.devnet
def test_connect_rpc_uses_the_nodes_pubsub_on_the_markets_topic(node: IpfsNode) -> None:
    conn = _connect(node.api_url)
    assert isinstance(conn.channel, IpfsPubsubChannel)
    assert conn.channel.topic == market_topic(31337, "0x" + "ab" * 20)
    lazy = _connect(node.api_url, chain_id=None).channel
    assert isinstance(lazy, IpfsPubsubChannel) and lazy._topic is None  # asked of the chain only when used


def test_connect_rpc_falls_back_when_the_node_has_no_pubsub(caplog: pytest.LogCaptureFixture) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NoPubsubKubo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = f"http://127.0.0.1:{server.server_address[1]}"
        assert pubsub_available(api) is False
        with caplog.at_level(logging.WARNING, logger="decloud.channel"):
            conn = _connect(api)
        assert isinstance(conn.channel, NullChannel)
        assert any("offers no pubsub" in r.getMessage() for r in caplog.records)
    finally:
        server.shutdown()
        server.server_close()


def test_a_node_that_does_not_answer_yet_keeps_the_channel(caplog: pytest.LogCaptureFixture) -> None:
    assert pubsub_available("http://127.0.0.1:9") is None
    conn = _connect("http://127.0.0.1:9")
    assert isinstance(conn.channel, IpfsPubsubChannel)  # it reconnects once the node is up
    conn.channel.publish(1, "running", {})  # and a dead node never raises into the worker
    assert conn.channel.flush(WAIT)
    conn.channel.close()


def test_a_signature_names_its_signer_for_one_topic_and_one_message() -> None:
    body = encode_message(7, "stdout", {"line": "hello", "worker": W})
    assert body is not None
    signed = sign_message(body, "decloud/1/0xm/live", W_KEY)
    assert decode_message(signed) == (7, "stdout", {"line": "hello", "worker": W})
    assert signed_by(signed, "decloud/1/0xm/live") == W
    assert signed_by(signed, "decloud/2/0xm/live") is None or signed_by(signed, "decloud/2/0xm/live") != W
    assert signed_by(body, "decloud/1/0xm/live") is None  # unsigned
    forged = signed.replace(b"hello", b"HELLO")
    assert signed_by(forged, "decloud/1/0xm/live") != W
    assert signed_by(signed[:-3] + b'zz"}', "decloud/1/0xm/live") is None


@pytest.mark.devnet
def test_messages_that_speak_for_a_worker_unsigned_or_signed_by_another_are_dropped(
    node: IpfsNode, topic: str, pair: tuple[IpfsPubsubChannel, IpfsPubsubChannel]
) -> None:
    publisher, subscriber = pair
    inbox = hearing(publisher, subscriber)
    rejected = subscriber.counts["rejected"]
    impostor = IpfsPubsubChannel(node.api_url, topic, signer=M_KEY)  # signs as M, claims to be W
    unsigned = IpfsPubsubChannel(node.api_url, topic)
    try:
        impostor.publish(5, "stdout", {"line": "fake", "worker": W})
        unsigned.publish(5, "stdout", {"line": "fake too", "worker": W})
        assert impostor.flush(WAIT) and unsigned.flush(WAIT)
        publisher.publish(5, "stdout", {"line": "real", "worker": W})
        publisher.publish(5, "note", {"message": "names nobody: no signature needed"})
        assert inbox.take(2) == [
            (5, "stdout", {"line": "real", "worker": W}),
            (5, "note", {"message": "names nobody: no signature needed"}),
        ]
        assert subscriber.counts["rejected"] == rejected + 2
    finally:
        impostor.close()
        unsigned.close()
