"""The ``local`` network's chain: an in-process EVM (py-evm through eth-tester).

One per process, shared by the notebook's client and the local workers. py-evm
is not thread-safe, so every call goes through one re-entrant lock; a condition
wakes followers as soon as a block is mined, so nobody has to poll on a timer.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from .artifact import load_artifact
from .market import Market

if TYPE_CHECKING:
    from web3 import Web3

#: Accounts eth-tester pre-funds; the first is the notebook's, the rest serve as workers.
REQUESTER_INDEX = 0


class EmbeddedChain:
    """An EVM in this process with TaskMarket deployed and accounts funded."""

    def __init__(self) -> None:
        from web3 import EthereumTesterProvider, Web3

        self.lock = threading.RLock()
        self.clock_epoch = 0  # bumped by time_travel: markets then read the clock again
        self._listeners: list[threading.Event] = []
        self._listeners_lock = threading.Lock()
        self.w3: Web3 = Web3(EthereumTesterProvider())
        self.accounts: list[str] = list(self.w3.eth.accounts)
        self.address = self._deploy()

    def _deploy(self) -> str:
        artifact = load_artifact()
        factory = self.w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        with self.lock:
            tx_hash = factory.constructor().transact({"from": self.accounts[REQUESTER_INDEX]})
            receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash)
        return str(receipt["contractAddress"])

    def market(self, account: str | int = REQUESTER_INDEX) -> Market:
        """A market client acting as one of the funded accounts (index or address)."""
        address = self.accounts[account] if isinstance(account, int) else account
        # Every transaction here wakes the followers at once, so polling is only a safety net.
        return Market(self.w3, self.address, address, lock=self.lock, on_block=self.notify_block, poll_interval=0.5,
                      clock_epoch=lambda: self.clock_epoch)  # fmt: skip

    def add_listener(self, wake: threading.Event) -> None:
        """Set ``wake`` whenever a transaction is mined here, so followers react at once."""
        with self._listeners_lock:
            self._listeners.append(wake)

    def remove_listener(self, wake: threading.Event) -> None:
        with self._listeners_lock:
            if wake in self._listeners:
                self._listeners.remove(wake)

    def notify_block(self) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for wake in listeners:
            wake.set()

    def time_travel(self, seconds: int) -> None:
        """Move the chain clock forward (tests of deadlines and leases)."""
        with self.lock:
            tester = self.w3.provider.ethereum_tester  # type: ignore[attr-defined]
            now = int(self.w3.eth.get_block("latest")["timestamp"])
            tester.time_travel(now + seconds)
            tester.mine_blocks(1)
            self.clock_epoch += 1
        self.notify_block()


_shared: EmbeddedChain | None = None
_shared_lock = threading.Lock()


def shared_chain() -> EmbeddedChain:
    """The process's embedded chain, started on first use (~0.4 s)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = EmbeddedChain()
        return _shared


def reset_shared_chain() -> None:
    """Forget the process's chain (tests start from genesis)."""
    global _shared
    with _shared_lock:
        _shared = None
