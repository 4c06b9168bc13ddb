// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.19;

import {SubscriptionConsumer} from "infernet-sdk/consumer/Subscription.sol";
import {AnswerBook} from "./AnswerBook.sol";

/// @title RecurringPrompter
/// @notice Asks the LLM the same prompt every `period` seconds, `frequency` times, e.g. a daily
///         summary. The node reads the prompt through `getContainerInputs` at each interval; answers
///         are kept per interval (`answerAt(id, interval, i)`, `latestAnswer(id)`).
contract RecurringPrompter is SubscriptionConsumer, AnswerBook {
    /// @notice Container id(s) as configured on the node.
    string public containerId;

    /// @notice Only the owner starts and cancels subscriptions (they may cost the owner payments).
    address public immutable owner;

    /// @dev subscriptionId => prompt asked at every interval.
    mapping(uint32 => string) private _prompts;

    /// @notice A recurring prompt was scheduled.
    event RecurringPromptStarted(uint32 indexed subscriptionId, uint32 frequency, uint32 period, string prompt);

    /// @notice Caller is not the owner.
    error NotOwner();

    /// @notice An empty prompt was given.
    error EmptyPrompt();

    /// @notice `frequency` is 0, `redundancy` is 0, or `frequency > 1` with `period == 0` (only
    ///         interval 1 would ever be deliverable).
    error InvalidSchedule();

    constructor(address registry, string memory containerId_) SubscriptionConsumer(registry) {
        containerId = containerId_;
        owner = msg.sender;
    }

    /// @notice Schedules `prompt`; the first interval opens `period` seconds from now.
    function start(string calldata prompt, uint32 frequency, uint32 period, uint16 redundancy)
        external
        returns (uint32 subscriptionId)
    {
        if (msg.sender != owner) {
            revert NotOwner();
        }
        if (bytes(prompt).length == 0) {
            revert EmptyPrompt();
        }
        if (frequency == 0 || redundancy == 0 || (frequency > 1 && period == 0)) {
            revert InvalidSchedule();
        }
        subscriptionId = _createComputeSubscription(
            containerId, frequency, period, redundancy, false, address(0), 0, address(0), address(0)
        );
        _prompts[subscriptionId] = prompt;
        emit RecurringPromptStarted(subscriptionId, frequency, period, prompt);
    }

    /// @notice Stops future intervals of a subscription started here.
    function cancel(uint32 subscriptionId) external {
        if (msg.sender != owner) {
            revert NotOwner();
        }
        _cancelComputeSubscription(subscriptionId);
    }

    /// @notice The prompt of a subscription ("" if unknown).
    function promptOf(uint32 subscriptionId) external view returns (string memory) {
        return _prompts[subscriptionId];
    }

    /// @notice `abi.encode(prompt)` for our subscriptions, empty bytes for unknown ids.
    function getContainerInputs(uint32 subscriptionId, uint32, uint32, address)
        external
        view
        override
        returns (bytes memory)
    {
        string storage prompt = _prompts[subscriptionId];
        if (bytes(prompt).length == 0) {
            return "";
        }
        return abi.encode(prompt);
    }

    function _receiveCompute(
        uint32 subscriptionId,
        uint32 interval,
        uint16 redundancy,
        address node,
        bytes calldata,
        bytes calldata output,
        bytes calldata,
        bytes32,
        uint256
    ) internal override {
        _recordAnswer(subscriptionId, interval, redundancy, node, output);
    }
}
