"""The contract's ABI read for people and for the client: event topics, error selectors
with one sentence each, and the terms ``TaskCreated`` packs into one word.
"""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from web3 import Web3

__all__ = ["ERROR_SENTENCES", "error_selectors", "event_topics", "revert_selector", "unpack_terms"]

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
            signature = f"{item['name']}({','.join(abi_type(i) for i in item['inputs'])})"
            topics[bytes(w3.keccak(text=signature))] = item["name"]
    return topics


def error_selectors(w3: Web3, abi: list[dict[str, Any]]) -> dict[str, str]:
    selectors = {}
    for item in abi:
        if item.get("type") == "error":
            signature = f"{item['name']}({','.join(abi_type(i) for i in item['inputs'])})"
            selectors[bytes(w3.keccak(text=signature))[:4].hex()] = item["name"]
    return selectors


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
