// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.19;

import {BaseConsumer} from "./Base.sol";

/// @title SubscriptionConsumer (offline stand-in for infernet-sdk v1.1 `consumer/Subscription.sol`)
/// @notice Recurring requests. Inputs are not stored: override `getContainerInputs` to serve them.
abstract contract SubscriptionConsumer is BaseConsumer {
    constructor(address registry) BaseConsumer(registry) {}

    /// @notice Creates a subscription processed `frequency` times, one interval every `period` seconds.
    function _createComputeSubscription(
        string memory containerId,
        uint32 frequency,
        uint32 period,
        uint16 redundancy,
        bool lazy,
        address paymentToken,
        uint256 paymentAmount,
        address wallet,
        address verifier
    ) internal returns (uint32) {
        return COORDINATOR.createSubscription(
            containerId, frequency, period, redundancy, lazy, paymentToken, paymentAmount, wallet, verifier
        );
    }

    /// @notice Cancels a subscription this contract owns.
    function _cancelComputeSubscription(uint32 subscriptionId) internal {
        COORDINATOR.cancelSubscription(subscriptionId);
    }
}
