"""Plain JSON-RPC for the calls on a task's path: send, receipt, new logs.

web3's request pipeline (middlewares, result formatters, attribute dicts)
costs more than the node itself on these calls: on anvil a transaction is
mined and its receipt read in about 3 ms, and web3 added 4 ms to it. So the
few calls every task makes go to the provider's ``make_request`` directly
and their answers are read here; everything else still goes through web3.

A node that mines each transaction as it arrives (anvil's automine) also
answers ``eth_sendRawTransactionSync`` (EIP-7966): the receipt comes back in
the same round trip. On any other node a transaction is sent the usual way
and its receipt polled without holding the caller's lock, since blocks come
on the chain's own time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ChainError

if TYPE_CHECKING:
    from web3 import Web3

__all__ = ["LogFields", "NodeRpc", "ReceiptFacts", "RpcRefused", "hex_text", "log_fields", "receipt_facts"]

#: JSON-RPC error codes that mean "this node does not have that method".
_NO_SUCH_METHOD = (-32601, -32600)


class RpcRefused(Exception):
    """The node answered a call with an error; ``data`` holds a revert's bytes when there are any."""

    def __init__(self, message: str, code: int | None = None, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.data = data


@dataclass(frozen=True)
class LogFields:
    topics: list[bytes]
    data: bytes
    block: int
    tx_hash: str
    log_index: int


@dataclass(frozen=True)
class ReceiptFacts:
    status: int
    block: int
    gas_used: int
    gas_price: int
    logs: list[Any]


class NodeRpc:
    """Raw calls to the node behind a ``Web3``; only for JSON-RPC providers (``speaks_json_rpc``)."""

    def __init__(self, w3: Web3) -> None:
        self._provider = w3.provider
        self._sync_send: bool | None = None  # unknown until asked once

    @staticmethod
    def speaks_json_rpc(w3: Web3) -> bool:
        """Whether ``w3`` talks to a node over HTTP (the in-process EVM is not one)."""
        from web3 import HTTPProvider

        return isinstance(w3.provider, HTTPProvider)

    def call(self, method: str, params: Sequence[Any]) -> Any:
        answer = self._provider.make_request(method, list(params))  # type: ignore[arg-type]
        error = answer.get("error")
        if error is not None:
            if isinstance(error, dict):
                raise RpcRefused(str(error.get("message", error)), error.get("code"), error.get("data"))
            raise RpcRefused(str(error))
        return answer.get("result")

    def send_and_mine(self, raw_tx: bytes) -> dict[str, Any] | None:
        """The receipt of ``raw_tx`` from one ``eth_sendRawTransactionSync``, or None where the node
        does not mine on demand (then nothing was sent). A refusal raises ``RpcRefused``."""
        if self._sync_send is None:
            self._sync_send = self._mines_on_demand()
        if not self._sync_send:
            return None
        try:
            receipt = self.call("eth_sendRawTransactionSync", ["0x" + raw_tx.hex()])
        except RpcRefused as exc:
            if exc.code in _NO_SUCH_METHOD:
                self._sync_send = False
                return None
            raise
        if not isinstance(receipt, dict):
            raise ChainError("The chain node answered eth_sendRawTransactionSync without a receipt.")
        return receipt

    def balance(self, address: str) -> int:
        """Wei held by ``address`` at the latest block."""
        return _int(self.call("eth_getBalance", [address, "latest"]))

    def new_logs(self, filter_id: str) -> list[dict[str, Any]]:
        return list(self.call("eth_getFilterChanges", [filter_id]) or [])

    def _mines_on_demand(self) -> bool:
        try:
            return self.call("anvil_getAutomine", []) is True
        except RpcRefused:
            return False


def _int(value: Any) -> int:
    return int(value, 16) if isinstance(value, str) else int(value)


def _bytes(value: Any) -> bytes:
    if isinstance(value, str):
        return bytes.fromhex(value.removeprefix("0x"))
    return bytes(value)


def hex_text(value: Any) -> str:
    """A hash as ``0x``-prefixed hex, whether it came as bytes, HexBytes or text."""
    text = value if isinstance(value, str) else value.hex()
    return text if text.startswith("0x") else "0x" + text


def log_fields(log: Any) -> LogFields:
    """A log as the node sent it (hex strings) or as web3 formatted it, read the same way."""
    return LogFields(
        topics=[_bytes(t) for t in log["topics"]],
        data=_bytes(log["data"]),
        block=_int(log["blockNumber"]),
        tx_hash=hex_text(log["transactionHash"]),
        log_index=_int(log["logIndex"]),
    )


def receipt_facts(receipt: Any) -> ReceiptFacts:
    """A receipt as the node sent it or as web3 formatted it."""
    price = receipt.get("effectiveGasPrice") or 0
    return ReceiptFacts(
        status=_int(receipt["status"]),
        block=_int(receipt["blockNumber"]),
        gas_used=_int(receipt["gasUsed"]),
        gas_price=_int(price),
        logs=list(receipt.get("logs") or []),
    )
