"""A worker: follows the market, claims tasks it accepts, runs them in the sandbox, settles them.

The same class serves the embedded pool (threads in the notebook's process)
and ``decloud worker`` (its own process on any machine): it only talks to the
market, the store and the live channel, never to the client's memory.

Handling one task is a template method: ``accepts`` → ``before_start`` (claim)
→ ``execute`` (fetch, sandbox) → ``on_complete`` (store, submit) or
``on_failure`` (release the seat so another worker can take it). Results are
settled by a ``Settler`` thread, batched when they queue up.

A single-validator task needs no claim on chain: the first valid result settles
it. Workers of one operator split such tasks without claims, which saves a
transaction per task: threads of one process (the embedded pool) through a
``TaskBoard``, processes (the devnet's workers) by a ``Share`` of the task ids.
A worker on its own claims first, so that two strangers do not both spend a
sandbox on the same task.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..chain.market import Market
from ..chain.records import ChainStatus, MarketEvent
from ..channel import LiveChannel, NullChannel
from ..errors import DecloudError
from ..store.base import Store
from .announcer import Announcer
from .offers import TaskOffer, WorkerPolicy
from .settler import Settlement, Settler
from .sharing import Share, TaskBoard

log = logging.getLogger("decloud.worker")

#: Seconds between two looks at the chain, at the least, however often the worker is woken.
MIN_POLL_GAP = 0.005


class Worker:
    """Serves one account on one market until stopped."""

    def __init__(
        self,
        market: Market,
        store: Store,
        *,
        channel: LiveChannel | None = None,
        policy: WorkerPolicy | None = None,
        name: str | None = None,
        wake: threading.Event | None = None,
        poll_interval: float | None = None,
        backlog_blocks: int = 256,
        stagger: Callable[[int], float] | None = None,
        board: TaskBoard | None = None,
        share: Share | None = None,
        blocks_pushed: Callable[[], bool] | None = None,
    ) -> None:
        self.market = market
        self.store = store
        self.channel = channel or NullChannel()
        self.policy = policy or WorkerPolicy()
        self.name = name or market.account[:10]
        self.wake = wake or threading.Event()
        self.poll_interval = market.poll_interval if poll_interval is None else poll_interval
        self._chain_clock = (0.0, 0)  # (when read, chain time): read at most once a second
        self.backlog_blocks = backlog_blocks
        # Seconds this worker lets pass before it competes for a task: workers that
        # know of each other (the embedded pool) take turns instead of all racing
        # for every claim, and the others step in only if the first one is slow.
        self.board = board
        self.share = share
        # whether the node pushes new blocks to everyone (``Connection.blocks_pushed``): then
        # the requester learns of a settlement from the chain, and needs no "settled" hint
        self.blocks_pushed = blocks_pushed or (lambda: False)
        if stagger is None and share is not None:
            stagger = lambda task_id: 0.0 if share.owns(task_id) else share.steal_after
        self.stagger = stagger or (lambda task_id: 0.0)
        self._first_seen: dict[int, float] = {}
        self.completed = 0
        self.failed = 0
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._slots = threading.BoundedSemaphore(self.policy.slots)
        self._pool = ThreadPoolExecutor(
            max_workers=self.policy.slots, thread_name_prefix=f"decloud-{self.name}"
        )
        self._settler = Settler(market, self._settled, name=self.name)
        # claims are sent while their tasks already run (see before_start)
        self._claims = ThreadPoolExecutor(
            max_workers=self.policy.slots, thread_name_prefix=f"decloud-{self.name}-c"
        )
        self._offers: dict[int, TaskOffer] = {}  # tasks not yet settled, by id
        self._leases: dict[int, int] = {}  # task id -> latest lease expiry seen (claimed by others)
        self._held: set[int] = set()
        self._seated: set[int] = set()  # tasks this worker already served: never claim twice
        self._direct: set[int] = set()  # tasks taken through the board, without a claim
        self._thread: threading.Thread | None = None

    # -- life ----------------------------------------------------------------

    def start(self) -> threading.Thread:
        """Serve in a background thread (the embedded pool)."""
        self._thread = threading.Thread(target=self.serve, name=f"decloud-worker-{self.name}", daemon=True)
        self._thread.start()
        return self._thread

    def serve(self) -> None:
        """Follow the market until ``stop()``; the loop of ``decloud worker``."""
        try:
            from .sandbox import prewarm

            prewarm()  # start an interpreter for the first task while we wait for it
            start_block = max(0, self.market.block_number() - self.backlog_blocks)
            follower = self.market.follow(from_block=start_block)
            # A requester says "created" on the live channel as its task is mined: look at
            # the chain at once instead of at the next poll. Only a hint: the chain decides.
            unsubscribe = self.channel.subscribe(self._on_hint)
            log.info("worker %s serving %s as %s", self.name, self.market.address, self.market.account)
            while not self._stop.is_set():
                self.wake.clear()
                last_poll = time.monotonic()
                try:
                    for event in follower.poll():
                        self._observe(event)
                    self._offer_work()
                except DecloudError as exc:
                    log.warning("worker %s: %s", self.name, exc)
                except RuntimeError:  # the interpreter is shutting down under a daemon thread
                    break
                except Exception:  # a worker outlives its own bugs; the log says what broke
                    log.exception("worker %s: unexpected error", self.name)
                self.wake.wait(self.poll_interval)
                # however many hints arrive, the node is asked at most every MIN_POLL_GAP seconds
                time.sleep(max(0.0, last_poll + MIN_POLL_GAP - time.monotonic()))
            unsubscribe()
            follower.close()
        finally:
            self._stopped.set()

    def _on_hint(self, task_id: int, kind: str, data: dict[str, Any]) -> None:
        if kind == "created":
            self.wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming; let held tasks finish (up to ``timeout``), then release what is left."""
        self._stop.set()
        self.wake.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        end = time.monotonic() + timeout
        while self._held and time.monotonic() < end:
            time.sleep(0.05)
        self._settler.close(max(0.0, end - time.monotonic()))  # results already computed still get paid
        for task_id in list(self._held - self._direct):
            try:
                self.market.release(task_id)
                log.info("worker %s released task %d on shutdown", self.name, task_id)
            except DecloudError as exc:
                log.warning("worker %s could not release task %d: %s", self.name, task_id, exc)
        self._stopped.wait(max(0.0, end - time.monotonic()) + 1)

    # -- following -----------------------------------------------------------

    def _observe(self, event: MarketEvent) -> None:
        task_id = event.task_id
        if task_id is None:
            return
        if event.name == "TaskCreated":
            self._offers[task_id] = TaskOffer.from_event(event)
            self._first_seen[task_id] = time.monotonic()
        elif event.name == "TaskClaimed":
            self._leases[task_id] = int(event.args["leaseExpiry"])
        elif event.name == "TaskReleased":
            self._leases.pop(task_id, None)
        elif event.name in (
            "TaskCompleted",
            "TaskCancelled",
            "TaskNotProcessed",
            "TaskDisputed",
            "TaskFailed",
        ):
            self._offers.pop(task_id, None)
            self._leases.pop(task_id, None)
            self._first_seen.pop(task_id, None)
            if self.board is not None:
                self.board.forget(task_id)

    def _offer_work(self) -> None:
        """Try the oldest acceptable tasks while a slot is free."""
        if not self._offers or len(self._held) >= self.policy.slots:
            return  # every slot is busy: no need to sort a long queue on each wake
        now = self._now()
        for task_id in sorted(self._offers, key=self._turn):
            if self._stop.is_set():
                return
            offer = self._offers.get(task_id)
            if offer is None or task_id in self._held or task_id in self._seated:
                continue
            if offer.deadline < now:
                self._offers.pop(task_id, None)
                continue
            lease = self._leases.get(task_id)
            if lease is not None and lease >= now and offer.validators == 1:
                continue  # someone holds it; look again when the lease runs out
            if time.monotonic() < self._first_seen.get(task_id, 0.0) + self.stagger(task_id):
                continue
            if not self.accepts(offer):
                continue
            if not self._slots.acquire(blocking=False):
                return
            if self.board is not None and self._needs_no_claim(offer) and not self.board.take(task_id):
                self._slots.release()
                continue  # another worker of this pool has it
            self._held.add(task_id)
            self._pool.submit(self._handle, offer)

    def _turn(self, task_id: int) -> tuple[bool, int, int]:
        """Its own share first; then oldest first by groups of 16, each worker in its own order.

        Workers that do not know of each other would otherwise all go for the
        same task first, and all but one would lose the claim, and with it the
        sandbox they started for it.
        """
        foreign = self.share is not None and not self.share.owns(task_id)
        return foreign, task_id // 16, zlib.crc32(f"{self.market.account}:{task_id}".encode())

    def _now(self) -> int:
        """Deadlines and leases are judged by the chain's clock, which may run ahead of ours."""
        read_at, chain_now = self._chain_clock
        if time.monotonic() - read_at > 1.0:
            chain_now = self.market.chain_time()
            self._chain_clock = (time.monotonic(), chain_now)
        else:
            chain_now += int(time.monotonic() - read_at)
        return max(int(time.time()), chain_now)

    # -- one task (template method) -------------------------------------------

    def accepts(self, offer: TaskOffer) -> bool:
        p = self.policy
        return (
            offer.price_per_seat >= p.min_price_wei
            and offer.timeout <= p.max_timeout
            and offer.memory_mb <= p.max_memory_mb
            and offer.requester != self.market.account
        )

    def _needs_no_claim(self, offer: TaskOffer) -> bool:
        ours = self.board is not None or (self.share is not None and self.share.owns(offer.task_id))
        return ours and offer.validators == 1

    def _handle(self, offer: TaskOffer) -> None:
        try:
            confirm = self.before_start(offer)
            if confirm is None:
                return
            cancel = threading.Event()
            late_claim = None
            if self.share is not None and offer.task_id in self._direct:
                # a long task is claimed after all, before the other workers would take it over
                late_claim = threading.Timer(self.share.claim_after, self._claim_late, (offer, cancel))
                late_claim.daemon = True
                late_claim.start()
            try:
                result = self.execute(offer, cancel=cancel, confirm=confirm)
            except Exception as exc:  # noqa: BLE001 (the worker must outlive anything one task does)
                if confirm.result():
                    self.on_failure(offer, exc)
            else:
                if confirm.result():
                    self.on_complete(offer, result)
            finally:
                if late_claim is not None:
                    late_claim.cancel()
        finally:
            self._held.discard(offer.task_id)
            self._direct.discard(offer.task_id)
            self._slots.release()
            self.wake.set()

    def before_start(self, offer: TaskOffer) -> Future[bool] | None:
        """Take the task: a claim, unless the board gave it to us; None if it is not ours.

        A single-validator task starts running while its claim is mined (the
        returned future says how the claim went): the claim then costs no time,
        and a lost race only cancels the sandbox. A seat of a multi-validator
        task is claimed before anything runs.
        """
        if self._needs_no_claim(offer):
            self._direct.add(offer.task_id)
            self._seated.add(offer.task_id)
            log.info("worker %s took task %d", self.name, offer.task_id)
        elif offer.validators == 1:
            return self._claims.submit(self._claim, offer)  # execute() says "running" once it is mined
        elif not self._claim(offer):
            return None
        taken: Future[bool] = Future()
        taken.set_result(True)
        return taken

    def _claim_late(self, offer: TaskOffer, cancel: threading.Event) -> None:
        if self._claim(offer):
            self._direct.discard(offer.task_id)  # now a seat like any other: released if we stop
        else:
            cancel.set()

    def _claim(self, offer: TaskOffer) -> bool:
        """Losing the race to another worker is normal, not an error."""
        try:
            self.market.claim(offer.task_id)
        except DecloudError as exc:
            log.debug("worker %s did not get task %d: %s", self.name, offer.task_id, exc)
            self._refresh(offer)
            return False
        self._seated.add(offer.task_id)
        log.info("worker %s claimed task %d", self.name, offer.task_id)
        return True

    def execute(
        self, offer: TaskOffer, cancel: threading.Event | None = None, confirm: Future[bool] | None = None
    ) -> bytes | memoryview:
        """Fetch the package (verified by its CID) and run it in a fresh sandbox process.

        ``confirm`` is the claim still being mined: if it is lost, ``cancel`` stops the sandbox.
        """
        from .sandbox import SandboxLimits, run_in_sandbox

        package = self.store.get(offer.input_cid)
        # an address-space limit: importing pandas alone reserves ~350 MB of it
        limits = SandboxLimits(memory_mb=max(1024, min(offer.memory_mb, self.policy.max_memory_mb)))
        say = Announcer(self.channel, offer.task_id, self.market.account)
        if confirm is None:
            say.open()
        else:
            # A claim still being mined: "running" and the lines wait for it (the client
            # has it from the chain first), and losing it cancels the run.
            def claimed(claim: Future[bool]) -> None:
                if claim.result():
                    say.open()
                elif cancel is not None:
                    cancel.set()

            confirm.add_done_callback(claimed)  # at once when it is already settled
        queued = len(self._offers) > len(self._held)  # more work waits: start the next interpreter now
        # the next interpreter starts once this result is settled (``_settled``), not while it is
        try:
            return run_in_sandbox(package, timeout=float(offer.timeout), limits=limits, on_stdout=say.line,
                                  cancel=cancel, queued=queued, refill=False)  # fmt: skip
        finally:
            say.close()

    def on_complete(self, offer: TaskOffer, result: bytes | memoryview) -> None:
        """Store the result and queue its settlement: a result the sandbox cut short refunds the requester."""
        from ..package import decode_result, result_digest

        parsed = decode_result(result)
        cid = self.store.put(result)
        digest = result_digest(result)
        self._settler.put(Settlement(offer.task_id, digest, cid, offer.validators, parsed.failure or None))

    def _settled(self, settlement: Settlement, accepted: bool, refusal: str | None) -> None:
        from .sandbox import prewarm

        prewarm()
        task_id = settlement.task_id
        if not accepted:
            log.warning("worker %s could not settle task %d: %s", self.name, task_id, refusal)
            return
        if settlement.failure is not None:
            self.failed += 1
            log.info("worker %s: task %d failed in the sandbox: %s", self.name, task_id, settlement.failure)
        else:
            self.completed += 1
            log.info("worker %s completed task %d -> %s", self.name, task_id, settlement.cid)
        if not self.blocks_pushed():
            # the requester's client looks at the chain at once rather than at its next poll;
            # naming nobody, the hint needs no signature (the chain says who settled)
            self.channel.publish(task_id, "settled", {})

    def on_failure(self, offer: TaskOffer, exc: BaseException) -> None:
        """Something outside the task broke (store down, bad package): give the seat back."""
        from .sandbox import prewarm

        log.warning("worker %s could not run task %d: %s", self.name, offer.task_id, exc)
        prewarm()
        self.channel.publish(
            offer.task_id, "note", {"message": f"worker {self.name} gave the task back: {exc}"}
        )
        if offer.task_id in self._direct:
            self._seated.discard(offer.task_id)
            if self.board is not None:
                self.board.give_back(offer.task_id)
            return
        try:
            self.market.release(offer.task_id)
            self._seated.discard(offer.task_id)
        except DecloudError as release_exc:
            log.warning("worker %s could not release task %d: %s", self.name, offer.task_id, release_exc)

    def _refresh(self, offer: TaskOffer) -> None:
        """After a lost claim, learn from the chain whether the task is still worth watching."""
        try:
            task = self.market.get_task(offer.task_id)
        except DecloudError:
            return
        if task.status not in (ChainStatus.OPEN, ChainStatus.CLAIMED):
            self._offers.pop(offer.task_id, None)
        elif offer.task_id not in self._leases:
            self._leases[offer.task_id] = int(time.time()) + offer.lease

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "account": self.market.account,
            "completed": self.completed,
            "failed": self.failed,
        }
