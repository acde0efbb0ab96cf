"""Transactions and logs through plain JSON-RPC on a real anvil: the same facts web3 gives.

A node that mines on demand answers ``eth_sendRawTransactionSync`` with the
receipt; with automine off, a transaction is sent the usual way and its
receipt polled. Both read back what web3's own receipt of it says.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from devnet_fixture import anvil  # noqa: F401 (a fixture)

from decloud_magics.chain.market import Market
from decloud_magics.devnet import chain_node
from decloud_magics.errors import ChainError, InsufficientFunds
from decloud_magics.keys import PrivateKey

CID = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
WORKER_KEY = "0x" + "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"  # anvil's second account


@pytest.fixture(scope="module")
def contract(anvil: chain_node.AnvilNode) -> str:  # noqa: F811
    return chain_node.deploy_and_fund(anvil.rpc_url, {}).contract


def market_of(node: chain_node.AnvilNode, contract: str, key: str = chain_node.DEV_KEY) -> Market:
    from web3 import HTTPProvider, Web3

    w3 = Web3(HTTPProvider(node.rpc_url))
    return Market(w3, contract, chain_node.address_of(key), key=PrivateKey(key, "a test"))


@pytest.fixture
def interval_mining(anvil: chain_node.AnvilNode) -> Iterator[None]:  # noqa: F811
    """Blocks every second, as on a chain that does not mine each transaction as it comes."""
    chain_node.rpc_call(anvil.rpc_url, "evm_setAutomine", [False])
    chain_node.rpc_call(anvil.rpc_url, "evm_setIntervalMining", [1])
    try:
        yield
    finally:
        chain_node.rpc_call(anvil.rpc_url, "evm_setIntervalMining", [0])
        chain_node.rpc_call(anvil.rpc_url, "evm_setAutomine", [True])


def same_as_web3(market: Market, outcome: Any) -> None:
    receipt = market.w3.eth.get_transaction_receipt(outcome.tx_hash)
    assert market.decode_logs(list(receipt["logs"])) == list(outcome.events)
    assert (outcome.block, outcome.gas_used) == (receipt["blockNumber"], receipt["gasUsed"])
    assert outcome.gas_cost_wei == receipt["gasUsed"] * receipt["effectiveGasPrice"] > 0


def test_calldata_is_what_web3_encodes(anvil: chain_node.AnvilNode, contract: str) -> None:  # noqa: F811
    market = market_of(anvil, contract)
    calls = {
        "createTask": [CID.encode(), 30, 45, 2**33, 1, 2, 2048],
        "createTasks": [[CID.encode(), b"x" * 70], 30, 45, 2**33, 3, 1, 512],
        "submitResult": [7, b"\x01" * 32, CID.encode()],
        "submitResults": [[1, 2], [b"\x02" * 32, b"\x03" * 32], [CID.encode(), b""]],
        "claim": [9],
    }
    for name, args in calls.items():
        assert market._calls.knows(name)
        expected = market.contract.encode_abi(name, args=args)
        assert "0x" + market._calls.encode(name, args).hex() == expected, name


def test_a_node_that_mines_on_demand_returns_the_receipt_with_the_send(
    anvil: chain_node.AnvilNode, contract: str  # noqa: F811
) -> None:
    requester = market_of(anvil, contract)
    chain_node.fund(anvil.rpc_url, {chain_node.address_of(WORKER_KEY): 10**18})
    worker = market_of(anvil, contract, WORKER_KEY)
    follower = worker.follow()
    task_id, created = requester.create_task(CID, 10**15, timeout=30, lease=45, deadline=requester.chain_time() + 600)
    assert requester.rpc is not None and requester.rpc._sync_send is True
    same_as_web3(requester, created)
    seen = follower.poll()  # new logs read through eth_getFilterChanges, decoded from the node's hex
    assert [e for e in seen if e.task_id == task_id] == [created.first("TaskCreated")]
    assert created.first("TaskCreated").args["inputCid"] == CID.encode()
    done = worker.submit_result(task_id, b"\x01" * 32, CID)
    same_as_web3(worker, done)
    assert done.first("TaskCompleted").args["paidPerWorker"] == 10**15
    with pytest.raises(ChainError, match="the task is no longer open"):
        worker.submit_result(task_id, b"\x01" * 32, CID)  # mined and reverted: the reason is replayed
    broke = market_of(anvil, contract, "0x" + secrets.token_hex(32))
    with pytest.raises(InsufficientFunds, match="cannot pay"):
        broke.create_task(CID, 10**15, timeout=30, lease=45, deadline=requester.chain_time() + 600)
    follower.close()


def test_elsewhere_the_transaction_is_sent_and_its_receipt_polled(
    anvil: chain_node.AnvilNode, contract: str, interval_mining: None  # noqa: F811
) -> None:
    requester = market_of(anvil, contract)
    task_id, created = requester.create_task(CID, 10**15, timeout=30, lease=45, deadline=requester.chain_time() + 600)
    assert requester.rpc is not None and requester.rpc._sync_send is False
    same_as_web3(requester, created)
    assert created.first("TaskCreated").task_id == task_id
