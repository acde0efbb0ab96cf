// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @notice Test-only participant of TaskMarket that is a contract rather than
/// a key: it can refuse payments, or call back into the market from its
/// receive hook, to exercise the market's payment fallbacks and guards.
contract MarketActor {
    address public immutable market;
    bool public rejecting;
    bytes public reentry;

    /// @dev The outcome of each call back into the market made while being paid.
    event Reentered(bool ok, bytes returned);

    constructor(address market_) {
        market = market_;
    }

    function setRejecting(bool on) external {
        rejecting = on;
    }

    function setReentry(bytes calldata data) external {
        reentry = data;
    }

    /// @notice Calls the market with `data` (and any value sent along),
    /// bubbling up the market's revert so tests see its custom error.
    function act(bytes calldata data) external payable returns (bytes memory) {
        (bool ok, bytes memory ret) = market.call{value: msg.value}(data);
        if (!ok) {
            assembly {
                revert(add(ret, 32), mload(ret))
            }
        }
        return ret;
    }

    receive() external payable {
        if (rejecting) revert("not accepting payments");
        if (reentry.length != 0) {
            (bool ok, bytes memory ret) = market.call(reentry);
            emit Reentered(ok, ret);
        }
    }
}
