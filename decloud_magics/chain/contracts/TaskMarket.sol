// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title TaskMarket
/// @notice Escrowed market for running notebook cells. A requester escrows a
/// price and opens a task with `validators` seats; distinct workers claim the
/// seats, run the task and submit a digest of the result. When every seat
/// submitted the same digest the workers share the price; at the first
/// disagreement the requester is refunded. Nothing is ever stranded: every
/// terminal state pays the escrow out, and an abandoned seat can be taken over.
/// @dev Only fixed-size terms live in storage, one slot per task; CIDs and
/// resource requests are carried by events alone, which is all a worker or the
/// UI needs from them. A single-validator task needs no claim: the first valid
/// result settles it, and a claim only buys a worker an exclusive lease.
contract TaskMarket {
    enum Status {
        None,
        Open,
        Claimed,
        Completed,
        NotProcessed,
        Cancelled,
        Disputed,
        Failed
    }

    uint8 public constant MAX_VALIDATORS = 16;

    /// @dev A push payment gets a bounded amount of gas so that a receiver that
    /// burns gas cannot make settlement unaffordable for the caller; a receiver
    /// that needs more can still pull its money with `withdraw`.
    uint256 private constant PAYOUT_GAS = 50_000;

    uint256 private constant NO_SEAT = type(uint256).max;

    struct Seat {
        address worker;
        uint40 leaseExpiry;
        bool submitted;
    }

    /// @dev Exactly one storage slot, so creating a task writes one new slot and
    /// each transition is one SLOAD + one SSTORE. The requester is stored once
    /// per account (see `_requesters`) and referred to by a 32-bit id.
    struct Core {
        uint32 requesterId;
        uint96 price;
        uint40 deadline;
        uint24 timeout;
        uint32 lease;
        uint8 validators;
        Status status;
        uint8 seatsTaken;
        uint8 submitted;
    }

    /// @dev One slot that every create reads and writes anyway. It also keeps
    /// the last requester's id, so a requester opening tasks one after another
    /// skips the registry read (a cold SLOAD) from its second task on.
    struct Counters {
        uint48 tasks;
        uint24 requesters;
        uint24 lastRequesterId;
        address lastRequester;
    }

    struct Task {
        Core core;
        Seat[MAX_VALIDATORS] seats;
        // Only used with several validators: every submission so far agreed on
        // this digest (a disagreement ends the task at once), so one slot
        // stands for all of them.
        bytes32 agreedDigest;
    }

    mapping(uint256 => Task) private _tasks;
    mapping(address => uint256) private _owed;
    mapping(address => uint24) private _requesterIds;
    mapping(uint32 => address) private _requesters;
    Counters private _counters;
    bool private transient _locked;

    /// @dev `terms` packs the task's fixed-size terms into one word of log data
    /// (five words fewer than one field each), from the lowest bit: deadline
    /// (40 bits), timeout (32), lease (32), validators (8), cpus (16), memoryMb (32).
    event TaskCreated(
        uint256 indexed taskId, address indexed requester, uint256 price, bytes inputCid, uint256 terms
    );
    event TaskClaimed(uint256 indexed taskId, address indexed worker, uint8 seat, uint40 leaseExpiry);
    event TaskReleased(uint256 indexed taskId, address indexed worker, uint8 seat);
    event ResultSubmitted(uint256 indexed taskId, address indexed worker, bytes32 resultDigest, bytes resultCid);
    event TaskCompleted(uint256 indexed taskId, bytes32 resultDigest, uint256 paidPerWorker);
    /// @dev Workers in seat order, then the submitter that disagreed (last entry).
    event TaskDisputed(uint256 indexed taskId, address[] workers, bytes32[] digests);
    /// @dev A seat holder could not produce a result (its sandbox killed the
    /// task at a limit the requester set): the requester gets the price back.
    event TaskFailed(
        uint256 indexed taskId, address indexed worker, bytes32 resultDigest, bytes resultCid, uint256 refund
    );
    event TaskCancelled(uint256 indexed taskId, uint256 refund);
    event TaskNotProcessed(uint256 indexed taskId, uint256 refund);
    event Withdrawal(address indexed to, uint256 amount);
    /// @dev A push payment was refused by the receiver; the amount waits in `owed`.
    event PaymentDeferred(address indexed to, uint256 amount);

    error BadPrice();
    error EmptyInputCid();
    error EmptyBatch();
    error BatchTooLarge();
    error UnevenBatchValue();
    error BadValidators();
    error BadLease();
    error BadDeadline();
    error BadTimeout();
    error UnevenBatch();
    error NoSuchTask();
    error TaskNotOpen();
    error DeadlinePassed();
    error DeadlineNotPassed();
    error NoFreeSeat();
    error AlreadySeated();
    error NotSeatHolder();
    error AlreadySubmitted();
    error NotRequester();
    error SeatsHeld();
    error NoSuchSeat();
    error NothingOwed();
    error TransferFailed();
    error Reentrancy();

    /// @dev Applied to every state-changing entry point, not only the paying
    /// ones: while a payout is in flight no receiver may act on the market.
    modifier nonReentrant() {
        if (_locked) revert Reentrancy();
        _locked = true;
        _;
        _locked = false;
    }

    // ------------------------------------------------------------------ create

    function createTask(
        bytes calldata inputCid,
        uint32 timeout,
        uint32 lease,
        uint40 deadline,
        uint8 validators,
        uint16 cpus,
        uint32 memoryMb
    ) external payable nonReentrant returns (uint256 taskId) {
        if (inputCid.length == 0) revert EmptyInputCid();
        _checkTerms(msg.value, timeout, lease, deadline, validators);
        Counters memory n = _counters;
        uint24 requesterId = _requesterId(n);
        taskId = ++n.tasks;
        _counters = n;
        _tasks[taskId].core =
            Core(requesterId, uint96(msg.value), deadline, uint24(timeout), lease, validators, Status.Open, 0, 0);
        emit TaskCreated(
            taskId, msg.sender, msg.value, inputCid, _packTerms(deadline, timeout, lease, validators, cpus, memoryMb)
        );
    }

    function createTasks(
        bytes[] calldata inputCids,
        uint32 timeout,
        uint32 lease,
        uint40 deadline,
        uint8 validators,
        uint16 cpus,
        uint32 memoryMb
    ) external payable nonReentrant returns (uint256 firstTaskId) {
        uint256 count = inputCids.length;
        if (count == 0) revert EmptyBatch();
        if (count > type(uint24).max) revert BatchTooLarge();
        if (msg.value % count != 0) revert UnevenBatchValue();
        uint256 price = msg.value / count;
        _checkTerms(price, timeout, lease, deadline, validators);
        Counters memory n = _counters;
        uint24 requesterId = _requesterId(n);
        firstTaskId = n.tasks + 1;
        n.tasks += uint48(count);
        _counters = n;
        Core memory core =
            Core(requesterId, uint96(price), deadline, uint24(timeout), lease, validators, Status.Open, 0, 0);
        uint256 terms = _packTerms(deadline, timeout, lease, validators, cpus, memoryMb);
        for (uint256 i; i < count; ++i) {
            bytes calldata cid = inputCids[i];
            if (cid.length == 0) revert EmptyInputCid();
            uint256 id = firstTaskId + i;
            _tasks[id].core = core;
            emit TaskCreated(id, msg.sender, price, cid, terms);
        }
    }

    // ------------------------------------------------------------------ work

    /// @notice Takes a free seat, or, when none is free, the seat of a holder
    /// whose lease ran out before it submitted: a stalled worker must not hold
    /// a task hostage until its deadline.
    function claim(uint256 taskId) external nonReentrant {
        Task storage t = _tasks[taskId];
        Core memory c = t.core;
        _requireLive(c.status);
        if (block.timestamp > c.deadline) revert DeadlinePassed();

        uint256 k = c.validators;
        uint256 free = NO_SEAT;
        uint256 stale = NO_SEAT;
        for (uint256 i; i < k; ++i) {
            Seat memory s = t.seats[i];
            if (s.worker == msg.sender) revert AlreadySeated();
            if (s.worker == address(0)) {
                if (free == NO_SEAT) free = i;
            } else if (!s.submitted && s.leaseExpiry < block.timestamp && stale == NO_SEAT) {
                stale = i;
            }
        }

        uint256 seat;
        if (free != NO_SEAT) {
            seat = free;
            c.seatsTaken += 1;
            if (c.seatsTaken == k) c.status = Status.Claimed;
            t.core = c;
        } else if (stale != NO_SEAT) {
            // The previous holder let its lease run out: the seat changes hands
            // and the task stays Claimed.
            seat = stale;
        } else {
            revert NoFreeSeat();
        }

        uint256 expiry = block.timestamp + c.lease;
        if (expiry > c.deadline) expiry = c.deadline;
        t.seats[seat] = Seat(msg.sender, uint40(expiry), false);
        emit TaskClaimed(taskId, msg.sender, uint8(seat), uint40(expiry));
    }

    function release(uint256 taskId) external nonReentrant {
        Task storage t = _tasks[taskId];
        Core memory c = t.core;
        _requireLive(c.status);
        uint256 seat = _seatOf(t, c.validators);
        delete t.seats[seat];
        c.seatsTaken -= 1;
        c.status = Status.Open;
        t.core = c;
        emit TaskReleased(taskId, msg.sender, uint8(seat));
    }

    /// @notice Settles a seat with the digest of its result. A single-validator
    /// task nobody holds needs no claim: whoever submits first completes it.
    function submitResult(uint256 taskId, bytes32 resultDigest, bytes calldata resultCid) external nonReentrant {
        (bytes4 refusal, uint256 earned) = _submit(taskId, resultDigest, resultCid);
        if (refusal != 0) _revertWith(refusal);
        if (earned != 0) _pay(msg.sender, earned);
    }

    /// @notice Many submissions in one transaction, paid to the sender once. A
    /// task that can no longer take this sender's result (another worker was
    /// first, its deadline passed) is skipped rather than failing the batch;
    /// the events say which were accepted.
    function submitResults(uint256[] calldata taskIds, bytes32[] calldata digests, bytes[] calldata resultCids)
        external
        nonReentrant
        returns (uint256 accepted)
    {
        uint256 count = taskIds.length;
        if (count == 0) revert EmptyBatch();
        if (digests.length != count || resultCids.length != count) revert UnevenBatch();
        uint256 earned;
        for (uint256 i; i < count; ++i) {
            (bytes4 refusal, uint256 e) = _submit(taskIds[i], digests[i], resultCids[i]);
            if (refusal == 0) {
                ++accepted;
                earned += e;
            }
        }
        if (earned != 0) _pay(msg.sender, earned);
    }

    /// @notice A seat holder (or, on a single-validator task nobody holds, any
    /// worker) reports that the task cannot complete (it ran past
    /// its timeout or another limit the requester set). The task ends Failed
    /// and the whole escrow returns to the requester: a worker gains nothing by
    /// reporting failure, so an honest one only does it when it must.
    function reportFailure(uint256 taskId, bytes32 resultDigest, bytes calldata resultCid) external nonReentrant {
        Task storage t = _tasks[taskId];
        Core memory c = t.core;
        bytes4 refusal = _liveRefusal(c);
        if (refusal == 0) (refusal,) = _submitter(t, c);
        if (refusal != 0) _revertWith(refusal);
        _clearSeats(t, c.seatsTaken, false);
        delete t.agreedDigest;
        c.status = Status.Failed;
        t.core = c;
        emit TaskFailed(taskId, msg.sender, resultDigest, resultCid, c.price);
        _pay(_requesters[c.requesterId], c.price);
    }

    // ------------------------------------------------------------------ requester

    /// @notice A seat whose holder submitted counts as held even after its lease:
    /// that worker did the work, so only `reclaim` after the deadline may end it.
    function cancel(uint256 taskId) external nonReentrant {
        Task storage t = _tasks[taskId];
        Core memory c = t.core;
        _requireRequester(c);
        if (c.status == Status.Claimed) revert SeatsHeld();
        if (c.status != Status.Open) revert TaskNotOpen();
        _clearSeats(t, c.seatsTaken, true);
        c.status = Status.Cancelled;
        t.core = c;
        emit TaskCancelled(taskId, c.price);
        _pay(msg.sender, c.price);
    }

    function reclaim(uint256 taskId) external nonReentrant {
        Task storage t = _tasks[taskId];
        Core memory c = t.core;
        _requireRequester(c);
        _requireLive(c.status);
        if (block.timestamp <= c.deadline) revert DeadlineNotPassed();
        _clearSeats(t, c.seatsTaken, false);
        delete t.agreedDigest;
        c.status = Status.NotProcessed;
        t.core = c;
        emit TaskNotProcessed(taskId, c.price);
        _pay(msg.sender, c.price);
    }

    function withdraw() external nonReentrant {
        uint256 amount = _owed[msg.sender];
        if (amount == 0) revert NothingOwed();
        _owed[msg.sender] = 0;
        emit Withdrawal(msg.sender, amount);
        bool ok;
        assembly ("memory-safe") {
            ok := call(gas(), caller(), amount, 0, 0, 0, 0)
        }
        // The caller asked for its own money: failing loudly keeps it owed.
        if (!ok) revert TransferFailed();
    }

    // ------------------------------------------------------------------ views

    function getTask(uint256 taskId)
        external
        view
        returns (
            address requester,
            uint256 price,
            uint40 deadline,
            uint32 timeout,
            uint32 lease,
            uint8 status,
            uint8 validators,
            uint8 seatsTaken,
            uint8 submitted
        )
    {
        Core memory c = _tasks[taskId].core;
        if (c.status == Status.None) {
            return (address(0), 0, 0, 0, 0, 0, 0, 0, 0);
        }
        requester = _requesters[c.requesterId];
        return (
            requester, c.price, c.deadline, c.timeout, c.lease, uint8(c.status), c.validators, c.seatsTaken, c.submitted
        );
    }

    /// @dev Seats are cleared when a task ends; the events keep their history.
    function getSeat(uint256 taskId, uint8 seat)
        external
        view
        returns (address worker, uint40 leaseExpiry, bool submitted, bytes32 digest)
    {
        Task storage t = _tasks[taskId];
        if (seat >= t.core.validators) revert NoSuchSeat();
        Seat memory s = t.seats[seat];
        return (s.worker, s.leaseExpiry, s.submitted, s.submitted ? t.agreedDigest : bytes32(0));
    }

    function taskCount() external view returns (uint256) {
        return _counters.tasks;
    }

    function owed(address who) external view returns (uint256) {
        return _owed[who];
    }

    // ------------------------------------------------------------------ internals

    function _checkTerms(uint256 price, uint32 timeout, uint32 lease, uint40 deadline, uint8 validators)
        private
        view
    {
        if (price == 0 || price > type(uint96).max) revert BadPrice();
        if (timeout > type(uint24).max) revert BadTimeout();
        if (validators == 0 || validators > MAX_VALIDATORS) revert BadValidators();
        if (lease == 0) revert BadLease();
        if (deadline <= block.timestamp) revert BadDeadline();
    }

    /// @dev The sender's id as a requester, registering it on its first task
    /// (the one time its address is written to storage).
    function _requesterId(Counters memory n) private returns (uint24 id) {
        if (n.lastRequester == msg.sender) return n.lastRequesterId;
        id = _requesterIds[msg.sender];
        if (id == 0) {
            id = ++n.requesters;
            _requesterIds[msg.sender] = id;
            _requesters[id] = msg.sender;
        }
        n.lastRequester = msg.sender;
        n.lastRequesterId = id;
    }

    function _requireLive(Status status) private pure {
        if (status == Status.Open || status == Status.Claimed) return;
        if (status == Status.None) revert NoSuchTask();
        revert TaskNotOpen();
    }

    function _liveRefusal(Core memory c) private view returns (bytes4) {
        if (c.status == Status.None) return NoSuchTask.selector;
        if (c.status != Status.Open && c.status != Status.Claimed) return TaskNotOpen.selector;
        if (block.timestamp > c.deadline) return DeadlinePassed.selector;
        return 0;
    }

    function _requireRequester(Core memory c) private view {
        if (c.status == Status.None) revert NoSuchTask();
        if (_requesters[c.requesterId] != msg.sender) revert NotRequester();
    }

    /// @dev The sender's seat, or NO_SEAT for a direct submission to a
    /// single-validator task that nobody holds.
    function _submitter(Task storage t, Core memory c) private view returns (bytes4 refusal, uint256 seat) {
        if (c.validators == 1 && c.seatsTaken == 0) return (0, NO_SEAT);
        uint256 k = c.validators;
        for (uint256 i; i < k; ++i) {
            Seat memory s = t.seats[i];
            if (s.worker == msg.sender) {
                if (s.submitted) return (AlreadySubmitted.selector, 0);
                return (0, i);
            }
        }
        return (NotSeatHolder.selector, 0);
    }

    /// @dev One submission, without reverting: the refusal (0 when accepted) and
    /// what the sender earned, still to be paid by the caller.
    function _submit(uint256 taskId, bytes32 resultDigest, bytes calldata resultCid)
        private
        returns (bytes4 refusal, uint256 earned)
    {
        Task storage t = _tasks[taskId];
        Core memory c = t.core;
        refusal = _liveRefusal(c);
        if (refusal != 0) return (refusal, 0);
        uint256 seat;
        (refusal, seat) = _submitter(t, c);
        if (refusal != 0) return (refusal, 0);
        emit ResultSubmitted(taskId, msg.sender, resultDigest, resultCid);

        uint256 k = c.validators;
        if (k == 1) {
            c.status = Status.Completed;
            c.submitted = 1;
            if (seat != NO_SEAT) {
                delete t.seats[0];
            }
            t.core = c;
            emit TaskCompleted(taskId, resultDigest, c.price);
            return (0, c.price);
        }

        if (c.submitted == 0) {
            t.agreedDigest = resultDigest;
        } else if (t.agreedDigest != resultDigest) {
            _dispute(t, c, taskId, resultDigest);
            return (0, 0);
        }

        c.submitted += 1;
        if (c.submitted < k) {
            t.seats[seat].submitted = true;
            t.core = c;
            return (0, 0);
        }

        // Every seat submitted and all agreed.
        c.status = Status.Completed;
        t.core = c;
        address[] memory workers = new address[](k);
        for (uint256 i; i < k; ++i) {
            workers[i] = t.seats[i].worker;
            delete t.seats[i];
        }
        delete t.agreedDigest;
        uint256 share = c.price / k;
        emit TaskCompleted(taskId, resultDigest, share);
        for (uint256 i; i < k; ++i) {
            if (i != seat) _pay(workers[i], share);
        }
        return (0, c.price - share * (k - 1));
    }

    function _packTerms(uint40 deadline, uint32 timeout, uint32 lease, uint8 validators, uint16 cpus, uint32 memoryMb)
        private
        pure
        returns (uint256)
    {
        return uint256(deadline) | (uint256(timeout) << 40) | (uint256(lease) << 72) | (uint256(validators) << 104)
            | (uint256(cpus) << 112) | (uint256(memoryMb) << 128);
    }

    function _revertWith(bytes4 selector) private pure {
        assembly ("memory-safe") {
            mstore(0, selector)
            revert(0, 4)
        }
    }

    /// @dev The caller's seat, which must not have submitted yet.
    function _seatOf(Task storage t, uint256 k) private view returns (uint256) {
        for (uint256 i; i < k; ++i) {
            Seat memory s = t.seats[i];
            if (s.worker == msg.sender) {
                if (s.submitted) revert AlreadySubmitted();
                return i;
            }
        }
        revert NotSeatHolder();
    }

    /// @dev Frees every held seat. With `onlyIdle` a seat whose holder still
    /// has a lease, or has already submitted work, blocks the whole call.
    function _clearSeats(Task storage t, uint256 held, bool onlyIdle) private {
        for (uint256 i; held != 0; ++i) {
            Seat memory s = t.seats[i];
            if (s.worker == address(0)) continue;
            if (onlyIdle && (s.submitted || s.leaseExpiry >= block.timestamp)) revert SeatsHeld();
            delete t.seats[i];
            --held;
        }
    }

    function _dispute(Task storage t, Core memory c, uint256 taskId, bytes32 resultDigest) private {
        uint256 n = uint256(c.submitted) + 1;
        address[] memory workers = new address[](n);
        bytes32[] memory digests = new bytes32[](n);
        bytes32 agreed = t.agreedDigest;
        uint256 j;
        uint256 k = c.validators;
        for (uint256 i; i < k; ++i) {
            Seat memory s = t.seats[i];
            if (s.worker == address(0)) continue;
            if (s.submitted) {
                workers[j] = s.worker;
                digests[j] = agreed;
                ++j;
            }
            delete t.seats[i];
        }
        workers[j] = msg.sender;
        digests[j] = resultDigest;
        delete t.agreedDigest;
        c.status = Status.Disputed;
        c.submitted += 1;
        t.core = c;
        emit TaskDisputed(taskId, workers, digests);
        _pay(_requesters[c.requesterId], c.price);
    }

    /// @dev Called only after all state is final. The receiver's return data is
    /// never copied, so it cannot inflate our memory cost.
    function _pay(address to, uint256 amount) private {
        bool ok;
        assembly ("memory-safe") {
            ok := call(PAYOUT_GAS, to, amount, 0, 0, 0, 0)
        }
        if (!ok) {
            _owed[to] += amount;
            emit PaymentDeferred(to, amount);
        }
    }
}
