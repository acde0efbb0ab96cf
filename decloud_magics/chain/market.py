"""A typed, synchronous client of the TaskMarket contract over web3.py.

One ``Market`` per (chain, account). Every chain call goes through ``self.lock``:
the in-process EVM is not thread-safe and is shared by the client's watcher and
the local workers; for a JSON-RPC node the lock also keeps nonces in order.

The values its calls return are in :mod:`decloud_magics.chain.records`; the
log filter behind ``Market.follow`` is in :mod:`decloud_magics.chain.follower`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

from ..errors import ChainError, InsufficientFunds, NetworkUnreachable
from ..models import DEFAULT_RESOURCES, Resources
from .abi import ERROR_SENTENCES, CallEncoder, LogDecoder, error_selectors, revert_selector, unpack_terms
from .artifact import load_artifact
from .follower import EventFollower, wait_until
from .records import ChainStatus, MarketEvent, OnchainTask, TxOutcome
from .rpc import NodeRpc, hex_text, log_fields, receipt_facts

if TYPE_CHECKING:  # web3 costs ~1 s to import: only the type checker pays it here
    from web3 import Web3

    from ..keys import PrivateKey

__all__ = ["ChainStatus", "EventFollower", "Market", "MarketEvent", "OnchainTask", "TxOutcome", "wait_until"]

#: Gas limits for the calls sent without an estimate (see ``Market._transact``):
#: measured use plus headroom; unused gas is not charged.
CREATE_GAS = 150_000
BATCH_GAS_PER_TASK = 45_000
SUBMIT_GAS = 90_000
BATCH_SUBMIT_GAS_PER_TASK = 30_000
CLAIM_GAS = 120_000
PAYOUT_GAS = 60_000

#: Seconds a network node's clock reading, and its fee figures, are reused (see ``Market.chain_time``).
CLOCK_TTL = 1.0
FEES_TTL = 10.0


class Market:
    """Calls and follows one deployed TaskMarket as one account.

    Parameters
    ----------
    w3 : a connected ``Web3``.
    address : the contract's address.
    account : the address transactions are sent from.
    key : the account's key for signing; None when the node holds unlocked
        accounts (the embedded chain).
    lock : shared with everyone using the same ``w3`` (the embedded chain).
    on_block : called after each of our transactions is mined, so followers on
        the same process wake at once instead of waiting for their next poll.
    """

    def __init__(
        self,
        w3: Web3,
        address: str,
        account: str,
        *,
        key: PrivateKey | None = None,
        lock: threading.RLock | None = None,
        on_block: Callable[[], None] | None = None,
        poll_interval: float = 0.05,
        clock_epoch: Callable[[], int] | None = None,
    ) -> None:
        artifact = load_artifact()
        self.w3 = w3
        self.address = w3.to_checksum_address(address)
        self.account = w3.to_checksum_address(account)
        self.contract = w3.eth.contract(address=self.address, abi=artifact["abi"])
        self.lock = lock or threading.RLock()
        self.poll_interval = poll_interval
        self._key = key
        self._on_block = on_block
        # changes when someone moves the chain's clock (the embedded chain's time travel)
        self._clock_epoch = clock_epoch or (lambda: 0)
        self._nonce: int | None = None
        # A node's answers that change slowly, kept for a few seconds: (monotonic time read, value[, epoch])
        self._clock: tuple[float, int, int] | None = None
        self._fees: tuple[float, dict[str, int]] | None = None
        self._chain_id: int | None = None  # asked once: web3 would ask before every signed transaction
        self._price: tuple[float, int] | None = None
        self._logs = LogDecoder(w3, artifact["abi"])
        self._calls = CallEncoder(w3, artifact["abi"])
        self._errors = error_selectors(w3, artifact["abi"])
        # a node over HTTP: the calls of a task's path skip web3's pipeline (see ``rpc.py``)
        self.rpc = NodeRpc(w3) if NodeRpc.speaks_json_rpc(w3) else None

    # -- transactions -------------------------------------------------------

    def create_task(
        self,
        input_cid: str,
        price_wei: int,
        *,
        timeout: int,
        lease: int,
        deadline: int,
        validators: int = 1,
        resources: Resources = DEFAULT_RESOURCES,
    ) -> tuple[int, TxOutcome]:
        """Open a task with its price in escrow; returns the task id and the receipt's facts."""
        outcome = self._transact(
            self.contract.functions.createTask(
                input_cid.encode(), timeout, lease, deadline, validators, resources.cpus, resources.memory_mb
            ),
            value=price_wei,
            gas=CREATE_GAS + 16 * len(input_cid),
        )
        return int(outcome.first("TaskCreated").args["taskId"]), outcome

    def create_tasks(
        self,
        input_cids: list[str],
        price_wei_each: int,
        *,
        timeout: int,
        lease: int,
        deadline: int,
        validators: int = 1,
        resources: Resources = DEFAULT_RESOURCES,
    ) -> tuple[list[int], TxOutcome]:
        """Open many tasks in one transaction: one base fee for the whole batch."""
        outcome = self._transact(
            self.contract.functions.createTasks(
                [cid.encode() for cid in input_cids],
                timeout,
                lease,
                deadline,
                validators,
                resources.cpus,
                resources.memory_mb,
            ),
            value=price_wei_each * len(input_cids),
            gas=CREATE_GAS + sum(BATCH_GAS_PER_TASK + 16 * len(c) for c in input_cids),
        )
        ids = [int(e.args["taskId"]) for e in outcome.events if e.name == "TaskCreated"]
        return ids, outcome

    def claim(self, task_id: int) -> TxOutcome:
        # In process a lost race costs no coin, so skip the estimate that runs the claim twice;
        # on a real chain the estimate spares a worker the gas of a claim that would revert.
        gas = CLAIM_GAS if self._key is None else None
        return self._transact(self.contract.functions.claim(task_id), gas=gas)

    def submit_result(self, task_id: int, digest: bytes, result_cid: str, validators: int = 1) -> TxOutcome:
        fn = self.contract.functions.submitResult(task_id, digest, result_cid.encode())
        return self._transact(fn, gas=SUBMIT_GAS + PAYOUT_GAS * validators + 16 * len(result_cid))

    def submit_results(self, results: list[tuple[int, bytes, str]]) -> tuple[set[int], TxOutcome]:
        """Settle many ``(task id, digest, result CID)`` in one transaction, paid once.

        Tasks another worker settled first are skipped by the contract, not
        reverted; returns the ids it accepted.
        """
        ids = [task_id for task_id, _, _ in results]
        digests = [digest for _, digest, _ in results]
        cids = [cid.encode() for _, _, cid in results]
        gas = SUBMIT_GAS + PAYOUT_GAS + sum(BATCH_SUBMIT_GAS_PER_TASK + 16 * len(c) for c in cids)
        outcome = self._transact(self.contract.functions.submitResults(ids, digests, cids), gas=gas)
        accepted = {int(e.args["taskId"]) for e in outcome.events if e.name == "ResultSubmitted"}
        return accepted, outcome

    def report_failure(self, task_id: int, digest: bytes, result_cid: str, validators: int = 1) -> TxOutcome:
        """A worker says the task could not run (killed by its limits): the requester is refunded."""
        fn = self.contract.functions.reportFailure(task_id, digest, result_cid.encode())
        return self._transact(fn, gas=SUBMIT_GAS + PAYOUT_GAS * validators + 16 * len(result_cid))

    def release(self, task_id: int) -> TxOutcome:
        return self._transact(self.contract.functions.release(task_id))

    def cancel(self, task_id: int) -> TxOutcome:
        return self._transact(self.contract.functions.cancel(task_id))

    def reclaim(self, task_id: int) -> TxOutcome:
        return self._transact(self.contract.functions.reclaim(task_id))

    def withdraw(self) -> TxOutcome:
        return self._transact(self.contract.functions.withdraw())

    # -- reads ---------------------------------------------------------------

    def get_task(self, task_id: int) -> OnchainTask:
        with self.guard():
            raw = self.contract.functions.getTask(task_id).call()
        requester, price, deadline, timeout, lease, status, validators, seats, submitted = raw
        return OnchainTask(
            task_id, requester, int(price), int(deadline), int(timeout), int(lease),
            ChainStatus(status), int(validators), int(seats), int(submitted),
        )  # fmt: skip

    def get_seat(self, task_id: int, seat: int) -> tuple[str, int, bool, bytes]:
        with self.guard():
            worker, lease_expiry, submitted, digest = self.contract.functions.getSeat(task_id, seat).call()
        return worker, int(lease_expiry), bool(submitted), bytes(digest)

    def owed(self, account: str | None = None) -> int:
        with self.guard():
            return int(self.contract.functions.owed(account or self.account).call())

    def balance(self, account: str | None = None) -> int:
        with self.guard():
            if self.rpc is not None:  # asked before every run (the wallet check): the short way
                return self.rpc.balance(account or self.account)
            return int(self.w3.eth.get_balance(cast(Any, account or self.account)))

    def chain_id(self) -> int:
        """The chain's id, asked once (and again after a refused transaction: the node may have changed)."""
        with self.guard():
            if self._chain_id is None:
                self._chain_id = int(self.w3.eth.chain_id)
            return self._chain_id

    def block_number(self) -> int:
        with self.guard():
            return int(self.w3.eth.block_number)

    def chain_time(self) -> int:
        """Timestamp of the latest block: the clock deadlines are judged by.

        It is read at most once a second and runs on our own clock in between
        (deadlines are minutes; reading a block per run is not), unless the
        chain's clock was moved (``clock_epoch``).
        """
        epoch = self._clock_epoch()
        if self._clock is not None and self._clock[2] == epoch and time.monotonic() - self._clock[0] < CLOCK_TTL:
            return self._clock[1] + int(time.monotonic() - self._clock[0])
        with self.guard():
            now = int(self.w3.eth.get_block("latest")["timestamp"])
        self._clock = (time.monotonic(), now, epoch)
        return now

    def gas_price(self) -> int:
        if self._key is not None and self._price is not None and time.monotonic() - self._price[0] < FEES_TTL:
            return self._price[1]
        with self.guard():
            price = int(self.w3.eth.gas_price)
        self._price = (time.monotonic(), price)
        return price

    # -- events --------------------------------------------------------------

    def follow(self, from_block: int | str = "latest") -> EventFollower:
        """A log filter over this contract; ``poll()`` returns only what is new."""
        return EventFollower(self, from_block)

    def decode_logs(self, logs: list[Any]) -> list[MarketEvent]:
        """Logs as the node sent them or as web3 formatted them."""
        events = []
        for log in logs:
            fields = log_fields(log)
            decoded = self._logs.decode(fields.topics, fields.data)
            if decoded is None:
                continue
            name, args = decoded
            if name == "TaskCreated":
                args.update(unpack_terms(int(args.pop("terms"))))
            events.append(MarketEvent(name, args, fields.block, fields.tx_hash, fields.log_index))
        return events

    def events_in(self, from_block: int, to_block: int | str = "latest") -> list[MarketEvent]:
        """Logs of a narrow block range (a full-chain scan gets slower with every block)."""
        with self.guard():
            query = {"address": self.address, "fromBlock": from_block, "toBlock": to_block}
            logs = self.w3.eth.get_logs(cast(Any, query))
        return self.decode_logs(list(logs))

    # -- internals -------------------------------------------------------------

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Hold the chain lock and turn connection failures into one sentence."""
        with self.lock:
            try:
                yield
            except (ConnectionError, OSError) as exc:
                raise NetworkUnreachable(
                    f"The chain node did not answer ({type(exc).__name__}): start it or check the network's RPC URL."
                ) from None
            except Exception as exc:
                if type(exc).__module__.startswith("requests"):
                    raise NetworkUnreachable(
                        "The chain node did not answer: start it (decloud devnet up) "
                        "or check the network's RPC URL."
                    ) from None
                raise

    def _transact(self, fn: Any, value: int = 0, gas: int | None = None) -> TxOutcome:
        """Send, wait for the receipt, decode its events.

        With ``gas`` the node's gas estimate is skipped: estimating runs the
        whole transaction once more, which doubles the latency of the calls that
        rarely revert (create, submit). A revert then shows in the receipt and
        is explained by replaying the call.
        """
        with self.guard():
            try:
                if self._key is None:
                    options = {"from": self.account, "value": value}
                    if gas is not None:
                        options["gas"] = gas
                    tx_hash = fn.transact(options)
                    receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120, poll_latency=0.01)
                else:
                    try:
                        tx_hash, receipt = self._send_signed(fn, value, gas)
                    except Exception as first:
                        reason = str(first).lower()
                        if "nonce" not in reason and "fee" not in reason:
                            raise
                        # another process (a second kernel) sent from this account, or the
                        # base fee rose past our cached fees: recount, re-ask, retry once
                        self._nonce = self._fees = None
                        tx_hash, receipt = self._send_signed(fn, value, gas)
            except Exception as exc:  # noqa: BLE001 (web3 and the node raise many types: each is explained)
                # a refused transaction may leave our count wrong: re-read it (and the chain id, should
                # the node have been replaced by another chain's)
                self._nonce = self._chain_id = None
                raise self._explain(exc, fn, value) from None
        if receipt is None:
            # A node mines on its own time: wait without the lock, so this account's
            # other calls (the worker's event polls) are not held behind the receipt.
            try:
                receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120, poll_latency=0.01)
            except Exception as exc:  # noqa: BLE001 (web3 and the node raise many types: each is explained)
                raise self._explain(exc, fn, value) from None
        facts = receipt_facts(receipt)
        with self.guard():
            if facts.status != 1:
                raise self._explain_revert(fn, value, facts.block, tx_hash)
            outcome = TxOutcome(
                tx_hash=hex_text(tx_hash),
                block=facts.block,
                gas_used=facts.gas_used,
                gas_cost_wei=facts.gas_used * facts.gas_price,
                events=tuple(self.decode_logs(facts.logs)),
            )
        if self._on_block is not None:
            self._on_block()
        return outcome

    def _explain_revert(self, fn: Any, value: int, block: int, tx_hash: Any) -> Exception:
        """Replay a reverted call on the state it met, to name the contract's reason."""
        try:
            fn.call({"from": self.account, "value": value}, block_identifier=block - 1)
        except Exception as exc:  # noqa: BLE001 (the replay's error, whatever its type, names the reason)
            explained = self._explain(exc, fn, value)
            if not str(explained).endswith("no reason given"):
                return explained
        return ChainError(f"The transaction {hex_text(tx_hash)} was reverted by the contract.")

    def _send_signed(self, fn: Any, value: int, gas: int | None = None) -> tuple[Any, Any]:
        """Sign and send; returns the hash, and the receipt when the node mined it on the spot.

        With a gas limit given, the transaction is built here from the
        calldata (``CallEncoder``) rather than by web3, which would also
        normalize every argument again.
        """
        if self._nonce is None:
            self._nonce = int(self.w3.eth.get_transaction_count(self.account, "pending"))
        options: dict[str, Any] = {"value": value, "nonce": self._nonce, "chainId": self.chain_id(),
                                   **self._fee_fields()}  # fmt: skip
        if gas is not None and self._calls.knows(fn.fn_name):
            if "maxFeePerGas" not in options:
                options["gasPrice"] = self.gas_price()
            tx = {**options, "to": self.address, "gas": gas, "data": self._calls.encode(fn.fn_name, fn.args)}
        else:
            tx = fn.build_transaction({**options, "from": self.account, **({} if gas is None else {"gas": gas})})
        signed = self.w3.eth.account.sign_transaction(tx, self._key.reveal())  # type: ignore[union-attr]
        receipt = None if self.rpc is None else self.rpc.send_and_mine(bytes(signed.raw_transaction))
        tx_hash = signed.hash if receipt is not None else self.w3.eth.send_raw_transaction(signed.raw_transaction)
        self._nonce += 1
        return tx_hash, receipt

    def _fee_fields(self) -> dict[str, int]:
        """EIP-1559 fees as web3 would set them (twice the base fee plus the tip), asked once per FEES_TTL.

        Left to web3, every transaction asks the node twice more (the tip and
        the latest block). A base fee can grow 12.5 % a block: twice it covers
        several blocks, and a refusal clears this cache (see ``_transact``).
        """
        if self._fees is not None and time.monotonic() - self._fees[0] < FEES_TTL:
            return self._fees[1]
        block = self.w3.eth.get_block("latest")
        base = block.get("baseFeePerGas")
        if base is None:  # a chain without EIP-1559: web3 uses the legacy gas price
            self._fees = (time.monotonic(), {})
            return {}
        tip = int(self.w3.eth.max_priority_fee)
        fields = {"maxFeePerGas": 2 * int(base) + tip, "maxPriorityFeePerGas": tip}
        self._fees = (time.monotonic(), fields)
        return fields

    def _explain(self, exc: Exception, fn: Any, value: int) -> Exception:
        """Turn a web3 error into a DecloudError with one sentence (and no key material)."""
        name = type(exc).__name__
        text = str(exc)
        selector = revert_selector(exc)
        if selector is not None and selector in self._errors:
            error = self._errors[selector]
            sentence = ERROR_SENTENCES.get(error, error)
            return ChainError(f"The market refused {fn.fn_name}: {sentence}.")
        lowered = text.lower()
        if any(p in lowered for p in ("insufficient funds", "enough funds", "enough balance")):
            return InsufficientFunds(
                f"The account {self.account} cannot pay {value} wei plus gas: fund it or lower the price."
            )
        if isinstance(exc, (ConnectionError, OSError)) or type(exc).__module__.startswith("requests"):
            return NetworkUnreachable(
                "The chain node did not answer: start it (decloud devnet up) or check the network's RPC URL."
            )
        return ChainError(f"The market refused {fn.fn_name} ({name}): {_first_line(text)}")


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "no reason given"
    return line[:200]
