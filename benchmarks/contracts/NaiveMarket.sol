// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title NaiveMarket
/// @notice The single-validator task lifecycle of TaskMarket written the
/// obvious way, as the baseline of benchmarks/gas.py: every term of a task in
/// one storage struct, CIDs as strings in storage, the price pushed to the
/// worker on submit. Not part of the product; never deployed anywhere real.
contract NaiveMarket {
    uint8 private constant OPEN = 1;
    uint8 private constant CLAIMED = 2;
    uint8 private constant COMPLETED = 3;

    struct Task {
        string inputCid;
        string resultCid;
        address requester;
        address worker;
        uint256 price;
        uint256 deadline;
        uint8 status;
    }

    Task[] public tasks;

    event TaskCreated(uint256 indexed taskId, address indexed requester, uint256 price);
    event TaskClaimed(uint256 indexed taskId, address indexed worker);
    event TaskCompleted(uint256 indexed taskId, address indexed worker);

    function createTask(string calldata inputCid, uint256 deadline) external payable returns (uint256 taskId) {
        require(msg.value > 0, "price must be positive");
        require(deadline > block.timestamp, "deadline in the past");
        taskId = tasks.length;
        tasks.push(Task(inputCid, "", msg.sender, address(0), msg.value, deadline, OPEN));
        emit TaskCreated(taskId, msg.sender, msg.value);
    }

    function createTasks(string[] calldata inputCids, uint256 deadline) external payable returns (uint256 first) {
        uint256 n = inputCids.length;
        require(n > 0 && msg.value % n == 0, "uneven batch");
        require(deadline > block.timestamp, "deadline in the past");
        uint256 price = msg.value / n;
        require(price > 0, "price must be positive");
        first = tasks.length;
        for (uint256 i = 0; i < n; i++) {
            tasks.push(Task(inputCids[i], "", msg.sender, address(0), price, deadline, OPEN));
            emit TaskCreated(first + i, msg.sender, price);
        }
    }

    function claim(uint256 taskId) external {
        Task storage t = tasks[taskId];
        require(t.status == OPEN, "not open");
        require(block.timestamp <= t.deadline, "deadline passed");
        t.worker = msg.sender;
        t.status = CLAIMED;
        emit TaskClaimed(taskId, msg.sender);
    }

    function submitResult(uint256 taskId, string calldata resultCid) external {
        Task storage t = tasks[taskId];
        require(t.status == CLAIMED, "not claimed");
        require(t.worker == msg.sender, "not the worker");
        require(block.timestamp <= t.deadline, "deadline passed");
        t.resultCid = resultCid;
        t.status = COMPLETED;
        emit TaskCompleted(taskId, msg.sender);
        (bool ok, ) = payable(msg.sender).call{value: t.price}("");
        require(ok, "payment failed");
    }
}
