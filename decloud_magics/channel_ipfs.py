"""The live channel of a real network, over IPFS pubsub.

Why IPFS pubsub: workers and notebooks already talk to an IPFS node (the
store), so its pubsub reaches both with no server of ours to run or trust. One
topic per market contract, one small JSON object per message: their shape, and
how a received one is checked, are in ``channel_messages.py``; how the node's
HTTP responses are read, in ``node_responses.py``.

Best effort and display only; the chain stays the source of truth (stages that
matter come from contract events, results from the store, checked against the
digest the chain recorded). A lost message changes a panel, never what a run returns.

On the wire (Kubo >= 0.11 and js-ipfs 0.66 alike; checked on js-ipfs 0.66.1):
the topic goes in ``arg`` as multibase ``u`` + unpadded base64url (js-ipfs
refuses any other spelling); ``pubsub/pub`` takes the data as a multipart file
part that must carry a Content-Type (js-ipfs answers 500 without one);
``pubsub/sub`` streams NDJSON, ``{}`` first, then one object per message with
``data`` in ``u`` base64url. js-ipfs has pubsub on by default (gossipsub, a
node's own messages delivered to its own subscribers), even ``--offline``, and
answers a ``pub`` nobody subscribes to with 500 ``PublishError.InsufficientPeers``
(no outage: nobody listens). Kubo needs ``--enable-pubsub-experiment`` or
``Pubsub.Enabled``, which ``pubsub_available`` detects.

A worker never waits: ``publish`` fills a bounded queue that one thread sends,
dropping when it is full or while the node is down (progress is stale by the
time it is back), logging an outage once. ``subscribe`` runs one reader thread
that reconnects with backoff and stops when the last listener unsubscribes.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .channel import Listener
from .channel_messages import (
    MAX_MESSAGE_BYTES,
    VERSION,
    decode_message,
    encode_message,
    market_topic,
    multibase_decode,
    multibase_encode,
)
from .channel_signing import SIGNATURE_BYTES, sign_message, signed_by
from .node_responses import describe, interrupt, lines, multipart_files, node_message
from .sessions import node_session
from .store.kubo import _http_url
from .untrusted import loads_json

if TYPE_CHECKING:
    import requests

    from .keys import PrivateKey

__all__ = [
    "MAX_MESSAGE_BYTES",
    "VERSION",
    "IpfsPubsubChannel",
    "_lines",
    "decode_message",
    "encode_message",
    "market_topic",
    "multibase_decode",
    "multibase_encode",
    "pubsub_available",
]

log = logging.getLogger("decloud.channel")

_lines = lines  # the name tests import it by


def pubsub_available(api_url: str, timeout: float = 3.0) -> bool | None:
    """Whether the node at ``api_url`` offers pubsub: True, False (it said no), None (no answer).

    No answer is no verdict (the node may be starting; the channel reconnects);
    an error is one (Kubo without pubsub enabled, an endpoint without pubsub).
    """
    import requests

    try:
        resp = requests.post(f"{_http_url(api_url)}/api/v0/pubsub/ls", timeout=(timeout, timeout))
    except requests.RequestException:
        return None
    with resp:
        if resp.status_code < 400:
            return True
        log.debug("pubsub probe at %s: HTTP %s %s", api_url, resp.status_code, node_message(resp))
        return False


class IpfsPubsubChannel:
    """A ``LiveChannel`` over the pubsub of one IPFS node (see the module's notes).

    ``topic`` is the market's topic, or a function returning it, called once
    from a background thread (for a network whose chain id must be asked of
    the chain). ``queue_size`` is how far a worker may get ahead of the node
    before messages are dropped; a subscription silent for ``idle_timeout`` is
    opened afresh, so a node that vanished without closing it is noticed.
    ``signer`` is the key of the worker (or client) whose messages name it: they
    go out signed, as subscribers drop every message naming a worker unsigned.
    """

    #: Each message costs the node a publish and a delivery per subscriber, on the
    #: one thread that also serves the task's package and result: a task that ends
    #: within this is announced by its settlement alone (devnet A/B, same hour:
    #: round trip 52-55 ms against 57-61, throughput 34-42 tasks/s against 34).
    announce_after = 0.25

    def __init__(
        self,
        api_url: str,
        topic: str | Callable[[], str],
        *,
        queue_size: int = 1024,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        connect_timeout: float = 3.0,
        publish_timeout: float = 5.0,
        idle_timeout: float = 300.0,
        backoff: tuple[float, float] = (0.25, 5.0),
        signer: PrivateKey | None = None,
    ) -> None:
        self.api_url = _http_url(api_url)
        self._signer = signer
        self._topic_source = topic
        self._topic: str | None = topic if isinstance(topic, str) else None
        self.max_message_bytes = int(max_message_bytes)
        self.connect_timeout, self.publish_timeout = float(connect_timeout), float(publish_timeout)
        self.idle_timeout = float(idle_timeout)
        self.min_backoff, self.max_backoff = backoff
        # "unheard": the node took the message but nobody subscribes to the topic right now.
        self.counts = {"published": 0, "unheard": 0, "dropped": 0, "received": 0, "rejected": 0}
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        # (message, whether to sign it): signed in the publisher's thread, never the worker's
        self._outbox: queue.Queue[tuple[bytes, bool]] = queue.Queue(maxsize=max(1, int(queue_size)))
        self._publisher: threading.Thread | None = None
        self._closed = threading.Event()
        self._listeners: list[Listener] = []
        self._reader: _Reader | None = None

    def __repr__(self) -> str:
        return f"IpfsPubsubChannel({self.api_url!r}, topic={self._topic or '(from the chain)'!r})"

    # -- the LiveChannel protocol ----------------------------------------------------

    def publish(self, task_id: int, kind: str, data: dict[str, Any]) -> None:
        """Queue one message and return at once; never raises, drops when the queue is full."""
        try:
            sign = self._signer is not None and "worker" in data
            body = encode_message(task_id, kind, data, self.max_message_bytes - (SIGNATURE_BYTES if sign else 0))
            if body is None or self._closed.is_set():
                self._count("dropped")
                return
            self._start_publisher()
            self._outbox.put_nowait((body, sign))
        except queue.Full:
            self._count("dropped")
            self._outage("full", True, "live channel: more messages than the IPFS node at %s takes; "
                         "dropping some", self.api_url)  # fmt: skip
        except Exception:  # a display channel must never stop a worker
            self._count("dropped")
            log.debug("live channel: could not queue a %r message", kind, exc_info=True)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(task_id, kind, data)`` for each message, from a background thread."""
        with self._lock:
            self._listeners.append(listener)
            if self._reader is None:
                reader = self._reader = _Reader()
                reader.thread = threading.Thread(target=self._read_loop, args=(reader,),
                                                 name="decloud-live-reader", daemon=True)  # fmt: skip
                reader.thread.start()

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)
            self._stop_reader(only_if_unused=True)

        return unsubscribe

    # -- beyond the protocol: waits for tests and a clean shutdown ----------------------

    def wait_subscribed(self, timeout: float) -> bool:
        """Whether the reader holds an open subscription now or gets one within ``timeout``."""
        reader = self._reader
        return reader is not None and reader.subscribed.wait(timeout)

    def flush(self, timeout: float) -> bool:
        """Wait until every queued message was sent or dropped; False if ``timeout`` came first."""
        end = time.monotonic() + timeout
        while self._outbox.unfinished_tasks:
            if time.monotonic() > end:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued (up to ``timeout``), then stop both threads."""
        self.flush(timeout)
        self._closed.set()
        with self._lock:
            self._listeners.clear()
        self._stop_reader(only_if_unused=False)
        if self._publisher is not None:
            self._publisher.join(timeout)

    # -- publishing --------------------------------------------------------------------

    def _start_publisher(self) -> None:
        with self._lock:
            if self._publisher is None:
                self._publisher = threading.Thread(target=self._publish_loop, name="decloud-live-publisher",
                                                   daemon=True)  # fmt: skip
                self._publisher.start()

    def _publish_loop(self) -> None:
        session = node_session(self.api_url)
        backoff, retry_at = self.min_backoff, 0.0
        while not self._closed.is_set():
            try:
                body, sign = self._outbox.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                if time.monotonic() < retry_at:
                    self._count("dropped")  # the node is down: don't make every message wait for a timeout
                    continue
                if sign and self._signer is not None:
                    body = sign_message(body, self.topic, self._signer)
                heard = self._post_pub(session, body)
            except Exception as exc:  # noqa: BLE001 (refused, down, or a chain not telling its id yet)
                self._count("dropped")
                retry_at, backoff = time.monotonic() + backoff, min(backoff * 2, self.max_backoff)
                self._outage("publish", True, "live channel: cannot publish to the IPFS node at %s (%s); "
                             "live progress is dropped until it answers", self.api_url, describe(exc))  # fmt: skip
            else:
                self._count("published" if heard else "unheard")
                backoff, retry_at = self.min_backoff, 0.0
                self._outage("publish", False, "live channel: publishing to the IPFS node at %s again",
                             self.api_url)  # fmt: skip
                if self._outbox.empty():
                    self._outage(
                        "full", False, "live channel: the IPFS node at %s keeps up again", self.api_url
                    )
            finally:
                self._outbox.task_done()
        session.close()

    def _post_pub(self, session: requests.Session, body: bytes) -> bool:
        """Send one message; False when the node says nobody subscribes, which is no outage."""
        payload, content_type = multipart_files([("message", [body])])
        resp = session.post(
            f"{self.api_url}/api/v0/pubsub/pub",
            params={"arg": self._topic_arg},
            data=payload,
            headers={"Content-Type": content_type},
            timeout=(self.connect_timeout, self.publish_timeout),
        )
        with resp:
            if resp.status_code < 400:
                return True
            message = node_message(resp)
            # js-ipfs (gossipsub) refuses to publish to a topic no peer, not even itself, subscribes
            # to; Kubo publishes into the void. A worker whose client went away is not an outage.
            if "InsufficientPeers" in message:
                return False
            raise RuntimeError(f"HTTP {resp.status_code}: {message}")

    # -- subscribing -------------------------------------------------------------------

    def _read_loop(self, reader: _Reader) -> None:
        session = node_session(self.api_url)
        backoff = self.min_backoff
        try:
            while not reader.stop.is_set():
                outcome = self._read_once(session, reader)
                reader.subscribed.clear()
                if outcome == "idle":
                    continue  # only silence: subscribe again at once
                if outcome == "ended":
                    backoff = self.min_backoff  # a live stream closed by the node: perhaps a restart
                reader.stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)
        finally:
            reader.subscribed.clear()
            session.close()

    def _read_once(self, session: requests.Session, reader: _Reader) -> str:
        """One subscription from connect to end: ``"idle"``, ``"ended"`` or ``"failed"``."""
        import requests

        try:
            resp = session.post(
                f"{self.api_url}/api/v0/pubsub/sub",
                params={"arg": self._topic_arg},
                stream=True,
                timeout=(self.connect_timeout, self.idle_timeout),
            )
        except Exception as exc:  # noqa: BLE001 (refused, unresolvable, or a chain not telling its id yet)
            if not reader.stop.is_set():
                self._outage("subscribe", True, "live channel: cannot subscribe at the IPFS node at %s (%s); "
                             "retrying", self.api_url, describe(exc))  # fmt: skip
            return "failed"
        with self._lock:
            reader.response = resp
        try:
            if reader.stop.is_set():  # unsubscribed while connecting: nothing was there to interrupt
                return "ended"
            if resp.status_code >= 400:
                self._outage("subscribe", True, "live channel: the IPFS node at %s refused to subscribe "
                             "(HTTP %s: %s); retrying", self.api_url, resp.status_code, node_message(resp))  # fmt: skip
                return "failed"
            reader.subscribed.set()
            self._outage(
                "subscribe", False, "live channel: subscribed at the IPFS node at %s again", self.api_url
            )
            # A message is base64 inside the node's JSON: a third more than the cap, plus the envelope.
            cap = self.max_message_bytes * 4 // 3 + 2048
            for line in lines(resp.iter_content(chunk_size=None), cap):  # type: ignore[arg-type]
                if reader.stop.is_set():
                    break
                self._deliver(line)
            return "ended"
        except requests.exceptions.ConnectionError as exc:
            # requests reports a read timeout on a stream as a connection error.
            return "idle" if "timed out" in str(exc).lower() and not reader.stop.is_set() else "ended"
        except Exception:  # noqa: BLE001 (a stream cut mid-read: the node stopped, or unsubscribe shut it)
            return "ended"
        finally:
            with self._lock:
                reader.response = None
            resp.close()

    def _deliver(self, line: bytes | None) -> None:
        message = None
        try:
            outer = loads_json(line) if line is not None else None
            if outer == {}:
                return  # the node's greeting at the start of a stream
            data = outer.get("data") if isinstance(outer, dict) else None
            if isinstance(data, str):
                raw = multibase_decode(data)
                message = decode_message(raw, self.max_message_bytes)
                if message is not None and "worker" in message[2]:
                    # it speaks for a worker: only that worker's signature makes it so
                    signer = signed_by(raw, self.topic)
                    if signer is None or signer.lower() != str(message[2]["worker"]).lower():
                        message = None
        except (ValueError, RecursionError):
            pass
        if message is None:
            self._count("rejected")
            return
        self._count("received")
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(*message)
            except Exception:  # one broken listener must not deafen the others
                log.debug("live channel: a listener failed", exc_info=True)

    def _stop_reader(self, only_if_unused: bool) -> None:
        """Stop the reader; a later ``subscribe`` starts a fresh one, so two never share state."""
        with self._lock:
            reader = self._reader
            if reader is None or (only_if_unused and self._listeners):
                return
            self._reader = None
            reader.stop.set()
            resp = reader.response
        if resp is not None:
            interrupt(resp)
        if reader.thread is not None and reader.thread is not threading.current_thread():
            reader.thread.join(timeout=self.connect_timeout + 2)

    # -- small things ------------------------------------------------------------------

    @property
    def topic(self) -> str:
        """The topic; one that comes from the chain is asked for on first use (which may raise)."""
        if self._topic is None:
            assert callable(self._topic_source)
            self._topic = str(self._topic_source())
        return self._topic

    @functools.cached_property
    def _topic_arg(self) -> str:
        """The topic as the RPC API takes it (multibase), worked out once."""
        return multibase_encode(self.topic.encode())

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def _outage(self, key: str, down: bool, message: str, *args: object) -> None:
        """Log where an outage starts (a warning) and ends: a dead node must not fill a worker's log."""
        with self._lock:
            if (key in self._warned) == down:
                return
            if down:
                self._warned.add(key)
            else:
                self._warned.discard(key)
        (log.warning if down else log.info)(message, *args)


class _Reader:
    """One reader thread's own state, so a stopping reader never touches its successor's."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.stop = threading.Event()
        self.subscribed = threading.Event()
        self.response: requests.Response | None = None
