"""Live progress on the devnet: `decloud worker` processes reach the notebook through IPFS pubsub.

The devnet (anvil, js-ipfs, workers) is brought up as ``test_devnet.py`` does,
through ``devnet_fixture``, in a home and on ports of its own. The worker
publishes "running" and each stdout line on the market's topic of the devnet's
IPFS node; the client subscribes there and turns them into run events between
the chain's. No assertion here is about timing; every wait has a timeout.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from devnet_fixture import private_devnet, requester_client

from decloud_magics.channel_ipfs import IpfsPubsubChannel, market_topic
from decloud_magics.devnet.manager import Devnet
from decloud_magics.models import EventKind

pytestmark = pytest.mark.devnet

PRICE = "0.01ether"
LINES = 6
# Prints over about three seconds, and ends a moment after its last line: the
# line travels by pubsub, the completion by the chain, and the test checks
# that the panel would show them in the order they happened.
CELL = f"""
import time
for i in range({LINES}):
    print("tick", i, flush=True)
    time.sleep(0.5)
"""


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    with private_devnet(tmp_path_factory.mktemp("devnet-live-home"), workers=2) as net:
        yield net


@pytest.fixture(scope="module")
def client(devnet: Devnet) -> Iterator[object]:
    with requester_client(devnet) as client:
        yield client


def test_workers_and_the_client_talk_over_the_devnets_ipfs_pubsub(devnet: Devnet, client) -> None:  # type: ignore[no-untyped-def]
    state = devnet.load_state()
    assert state is not None
    channel = client.conn.channel
    assert isinstance(channel, IpfsPubsubChannel) and channel.api_url == state.ipfs_api
    assert channel.topic == market_topic(state.chain_id, state.contract)
    assert channel.wait_subscribed(60), "the client never got a subscription at the devnet's IPFS node"
    for worker in state.workers:
        log = Path(worker.log).read_text(errors="replace")
        assert "offers no pubsub" not in log and "live channel" not in log, log[-2000:]


def test_a_run_streams_running_and_stdout_between_the_chains_events(devnet: Devnet, client) -> None:  # type: ignore[no-untyped-def]
    assert client.conn.channel.wait_subscribed(60)
    run = client.submit(CELL, timeout=30, price=PRICE)
    result = run.result(timeout=180)
    assert result.stdout == "".join(f"tick {i}\n" for i in range(LINES))

    kinds = [e.kind for e in run.events]
    expected = [EventKind.CREATED, EventKind.ORDER_PLACED, EventKind.RUNNING,
                *[EventKind.STDOUT] * LINES, EventKind.COMPLETED]  # fmt: skip
    assert kinds == expected, [(e.kind.value, e.message) for e in run.events]
    lines = [e for e in run.events if e.kind == EventKind.STDOUT]
    assert [e.message for e in lines] == [f"tick {i}" for i in range(LINES)]
    # Every live message names the worker the chain says claimed the task.
    running = next(e for e in run.events if e.kind == EventKind.RUNNING)
    assert running.data["worker"] == run.worker
    assert all(e.data["worker"] == run.worker for e in lines)
