"""Open a network: the market client, the content store and the live channel for one config.

``local`` is started in process on first use (chain, store, workers) and shared
by every client of the process; any other network is reached over its URLs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from .chain.market import Market
from .channel import LiveChannel, LocalChannel, NullChannel
from .errors import ConfigError
from .keys import PrivateKey, load_key_file, load_private_key
from .networks import NetworkConfig
from .paths import decloud_home
from .store.base import Store


@dataclass
class Connection:
    """Everything a client needs to reach one market as one account."""

    config: NetworkConfig
    market: Market
    store: Store
    channel: LiveChannel
    wake: threading.Event
    key: PrivateKey | None = None
    embedded: Any = None  # the EmbeddedChain, for the local network
    heads: Any = None  # the HeadWatcher of an RPC network

    def blocks_pushed(self) -> bool:
        """Whether the node pushes each new block to us as it is mined (``chain/heads.py``).

        Then it pushes them to everyone else on this network too, and a hint on
        the live channel that the chain changed ("created", "settled") would
        arrive after the block and only load the IPFS node at the moment the
        other side reads from it.
        """
        return self.heads is not None and self.heads.subscribed.is_set()

    def close(self) -> None:
        if self.embedded is not None:
            self.embedded.remove_listener(self.wake)
        if self.heads is not None:
            self.heads.close()


class _LocalNetwork:
    """The process-wide embedded network: one chain, one store, one channel, one worker pool."""

    def __init__(self) -> None:
        from .chain.embedded import EmbeddedChain
        from .store.local import LocalStore
        from .worker.pool import LocalWorkerPool

        self.chain = EmbeddedChain()
        self.store = LocalStore(decloud_home() / "blocks")
        self.channel = LocalChannel()
        self.pool = LocalWorkerPool(self.chain, self.store, self.channel).start()

    def stop(self) -> None:
        self.pool.stop(timeout=5)


_local: _LocalNetwork | None = None
_local_lock = threading.Lock()


def local_network() -> _LocalNetwork:
    global _local
    with _local_lock:
        if _local is None:
            _local = _LocalNetwork()
        return _local


def stop_local_network() -> None:
    """Stop the embedded workers and forget the chain (tests start from genesis)."""
    global _local
    with _local_lock:
        if _local is not None:
            _local.stop()
        _local = None


def connect(config: NetworkConfig, key: PrivateKey | None = None) -> Connection:
    """A connection to ``config`` as the user's account."""
    wake = threading.Event()
    if config.is_embedded:
        local = local_network()
        local.chain.add_listener(wake)
        return Connection(
            config=config,
            market=local.chain.market(0),
            store=local.store,
            channel=local.channel,
            wake=wake,
            embedded=local.chain,
        )
    key = key or load_private_key()
    if key is None and config.name == "devnet":
        # `decloud devnet up` funds a key of its own for the notebook when the user has none
        devnet_key = decloud_home() / "devnet" / "requester.key"
        if devnet_key.is_file():
            key = load_key_file(devnet_key)
    return connect_rpc(config, key, wake)


def connect_rpc(config: NetworkConfig, key: PrivateKey | None, wake: threading.Event | None = None) -> Connection:
    """A connection over JSON-RPC and the Kubo RPC API."""
    from web3 import HTTPProvider, Web3

    from .chain.heads import HeadWatcher
    from .channel_ipfs import IpfsPubsubChannel, market_topic, pubsub_available
    from .sessions import node_session
    from .store.kubo import KuboStore

    if not (config.rpc_url and config.contract and config.ipfs_api):
        raise ConfigError(f"The network '{config.name}' lacks an RPC URL, a contract address or an IPFS API URL.")
    if key is None:
        raise ConfigError(
            f"No key for the network '{config.name}': set DECLOUD_PRIVATE_KEY, put it in a .env file, "
            "or point DECLOUD_KEYSTORE at an encrypted keystore."
        )
    from eth_account import Account

    # One explicit session serves every thread (web3 would make one per thread): Market
    # calls go through its lock, and a node session skips requests' environment reads.
    session = node_session(config.rpc_url)
    w3 = Web3(HTTPProvider(config.rpc_url, request_kwargs={"timeout": 30}, session=session))
    account = Account.from_key(key.reveal()).address
    market = Market(w3, config.contract, account, key=key)
    store = KuboStore(config.ipfs_api)
    # The live channel rides on the same IPFS node's pubsub. Only a node that
    # answers "no pubsub here" turns it off; one that does not answer yet may be
    # starting, and the channel reconnects on its own.
    channel: LiveChannel
    if pubsub_available(config.ipfs_api) is False:
        import logging

        logging.getLogger("decloud.channel").warning(
            "The IPFS node at %s offers no pubsub, so live progress (running, stdout) is off for the network "
            "'%s'; the chain still reports every stage. Kubo enables it with --enable-pubsub-experiment.",
            store.api_url, config.name,
        )  # fmt: skip
        channel = NullChannel()
    else:
        contract, chain_id = config.contract, config.chain_id

        def topic() -> str:
            # Without a saved chain id the chain is asked, from the channel's thread: connecting stays offline.
            if chain_id:
                return market_topic(chain_id, contract)
            return market_topic(market.chain_id(), contract)  # the market's transactions reuse the answer

        channel = IpfsPubsubChannel(store.api_url, topic() if chain_id else topic, signer=key)
    wake = wake or threading.Event()
    return Connection(
        config=config,
        market=market,
        store=store,
        channel=channel,
        wake=wake,
        key=key,
        heads=HeadWatcher(config.rpc_url, wake.set).start(),  # each new block wakes the followers
    )
