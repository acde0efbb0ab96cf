"""The contract's ABI read for people and for the client: event topics, error selectors
with one sentence each, and the terms ``TaskCreated`` packs into one word.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from web3 import Web3

__all__ = [
    "ERROR_SENTENCES",
    "CallEncoder",
    "LogDecoder",
    "error_selectors",
    "event_topics",
    "revert_selector",
    "unpack_terms",
]

#: One sentence per custom error of the contract, for people rather than ABIs.
ERROR_SENTENCES = {
    "NotRequester": "only the account that created the task may do this",
    "TaskNotOpen": "the task is no longer open",
    "DeadlinePassed": "the task's deadline has passed",
    "DeadlineNotPassed": "the task's deadline has not passed yet",
    "NoFreeSeat": "every seat of the task is taken",
    "AlreadySeated": "this worker already holds a seat of the task",
    "NotSeatHolder": "this account does not hold a seat of the task",
    "AlreadySubmitted": "this seat already submitted a result",
    "SeatsHeld": "a worker holds the task; it can be cancelled only while nobody does",
    "BadValidators": "validators must be between 1 and 16",
    "BadPrice": "the price must be more than zero and fit the contract's range",
    "BadDeadline": "the deadline must be in the future",
    "BadLease": "the lease must be longer than zero seconds",
    "BadTimeout": "the timeout must be at most 16,777,215 seconds (194 days)",
    "UnevenBatch": "a batch needs one digest and one result CID per task",
    "NothingOwed": "nothing is owed to this account",
    "Reentrancy": "a re-entrant call was refused",
    "NoSuchTask": "there is no task with this id",
    "EmptyBatch": "a batch needs at least one task",
    "UnevenBatchValue": "the value sent must split evenly across the batch",
    "EmptyInputCid": "a task needs the CID of its input package",
    "BatchTooLarge": "a batch may hold at most 16,777,215 tasks",
    "NoSuchSeat": "the task has no seat with this number",
    "TransferFailed": "the payment could not be sent; it stays owed and can be withdrawn later",
}


#: ``TaskCreated.terms``: (field, bit offset, width), lowest bits first.
_TERMS_LAYOUT = (
    ("deadline", 0, 40),
    ("timeout", 40, 32),
    ("lease", 72, 32),
    ("validators", 104, 8),
    ("cpus", 112, 16),
    ("memoryMb", 128, 32),
)


def unpack_terms(terms: int) -> dict[str, int]:
    """The named fields of ``TaskCreated.terms``, which the contract packs into one word to save gas."""
    return {name: (terms >> shift) & ((1 << width) - 1) for name, shift, width in _TERMS_LAYOUT}


def event_topics(w3: Web3, abi: list[dict[str, Any]]) -> dict[bytes, str]:
    topics = {}
    for item in abi:
        if item.get("type") == "event":
            topics[signature_hash(w3, item)] = item["name"]
    return topics


class LogDecoder:
    """The contract's logs decoded by eth_abi directly, into what web3's ``process_log`` gives.

    web3 builds a ContractEvent per log and runs its formatters over the
    result; a worker decodes every ``TaskCreated`` of the market, and that was
    a fifth of its CPU per task. Here each event's types are read from the ABI
    once. Addresses come back checksummed, and an indexed value of a dynamic
    type as its topic (the hash the log holds), as web3 gives them.
    """

    def __init__(self, w3: Web3, abi: list[dict[str, Any]]) -> None:
        from eth_abi import decode
        from eth_utils import to_checksum_address

        self._decode = decode
        self._checksum = to_checksum_address
        #: topic -> (name, indexed (name, type), data names, data types)
        self._events: dict[bytes, tuple[str, list[tuple[str, str]], list[str], list[str]]] = {}
        names = event_topics(w3, abi)
        by_name = {item["name"]: item for item in abi if item.get("type") == "event"}
        for topic, name in names.items():
            inputs = by_name[name]["inputs"]
            indexed = [(i["name"], abi_type(i)) for i in inputs if i.get("indexed")]
            data = [i for i in inputs if not i.get("indexed")]
            self._events[topic] = (name, indexed, [i["name"] for i in data], [abi_type(i) for i in data])

    def decode(self, topics: Sequence[bytes], data: bytes) -> tuple[str, dict[str, Any]] | None:
        """``(event name, args)``, or None for a log of no event of this ABI."""
        if not topics:
            return None
        known = self._events.get(bytes(topics[0]))
        if known is None:
            return None
        name, indexed, data_names, data_types = known
        if len(topics) != len(indexed) + 1:
            return None  # another event with the same signature but other indexed inputs
        args: dict[str, Any] = {}
        for (arg, kind), topic in zip(indexed, topics[1:]):
            args[arg] = (
                bytes(topic) if _dynamic(kind) else self._tidy(kind, self._decode([kind], bytes(topic))[0])
            )
        values = self._decode(data_types, bytes(data))
        for arg, kind, value in zip(data_names, data_types, values):
            args[arg] = self._tidy(kind, value)
        return name, args

    def _tidy(self, kind: str, value: Any) -> Any:
        if kind == "address":
            return self._checksum(value)
        if kind.endswith("]"):
            inner = kind[: kind.rindex("[")]
            return [self._tidy(inner, v) for v in value]
        return value


class CallEncoder:
    """Calldata for the contract's functions by eth_abi directly.

    web3's ``build_transaction`` runs its normalizers over every argument and
    the ABI on each call, 1–2 ms of a worker's or a requester's transaction.
    Overloaded names are left out: ``knows`` says which names are served.
    """

    def __init__(self, w3: Web3, abi: list[dict[str, Any]]) -> None:
        from eth_abi import encode

        self._encode = encode
        self._functions: dict[str, tuple[bytes, list[str]]] = {}
        names = [item["name"] for item in abi if item.get("type") == "function"]
        for item in abi:
            if item.get("type") == "function" and names.count(item["name"]) == 1:
                types = [abi_type(i) for i in item["inputs"]]
                self._functions[item["name"]] = (signature_hash(w3, item)[:4], types)

    def knows(self, name: str) -> bool:
        return name in self._functions

    def encode(self, name: str, args: Sequence[Any]) -> bytes:
        selector, types = self._functions[name]
        return selector + self._encode(types, list(args))


def _dynamic(kind: str) -> bool:
    """Whether values of ``kind`` are hashed into a topic when indexed."""
    return kind in ("bytes", "string") or kind.endswith("]") or kind.startswith("(")


def error_selectors(w3: Web3, abi: list[dict[str, Any]]) -> dict[str, str]:
    selectors = {}
    for item in abi:
        if item.get("type") == "error":
            selectors[signature_hash(w3, item)[:4].hex()] = item["name"]
    return selectors


def signature_hash(w3: Web3, item: dict[str, Any]) -> bytes:
    """keccak of ``name(type,...)``: an event's topic, or, cut to 4 bytes, a function's or an error's selector."""
    return bytes(w3.keccak(text=f"{item['name']}({','.join(abi_type(i) for i in item['inputs'])})"))


def abi_type(item: dict[str, Any]) -> str:
    kind = str(item["type"])
    if kind.startswith("tuple"):
        return "(" + ",".join(abi_type(c) for c in item["components"]) + ")" + kind[len("tuple") :]
    return kind


def revert_selector(exc: BaseException) -> str | None:
    """The 4-byte custom-error selector of a revert, wherever the provider put it."""
    seen: BaseException | None = exc
    while seen is not None:
        data = getattr(seen, "data", None)
        if isinstance(data, str) and data.startswith("0x") and len(data) >= 10:
            return data[2:10].lower()
        for arg in getattr(seen, "args", ()):
            if isinstance(arg, (bytes, bytearray)) and len(arg) >= 4:
                return bytes(arg[:4]).hex()
            if isinstance(arg, str) and "execution reverted: b" in arg:
                # eth-tester writes the revert data as a bytes literal in its message
                literal = arg.split("execution reverted: ", 1)[1].strip()
                try:
                    value = ast.literal_eval(literal)
                except (ValueError, SyntaxError):
                    value = None
                if isinstance(value, bytes) and len(value) >= 4:
                    return value[:4].hex()
        seen = seen.__cause__ or seen.__context__
    return None
