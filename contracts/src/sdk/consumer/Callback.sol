// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.19;

import {BaseConsumer} from "./Base.sol";

/// @title CallbackConsumer (offline stand-in for infernet-sdk v1.1 `consumer/Callback.sol`)
/// @notice One-off requests: a subscription with `frequency = 1`, `period = 0`, `lazy = false` whose
///         inputs are stored here and served to the node through `getContainerInputs`.
abstract contract CallbackConsumer is BaseConsumer {
    mapping(uint32 => bytes) private subscriptionInputs;

    constructor(address registry) BaseConsumer(registry) {}

    /// @notice Creates the one-off subscription and remembers its inputs.
    /// @return subscription id assigned by the Coordinator
    function _requestCompute(
        string memory containerId,
        bytes memory inputs,
        uint16 redundancy,
        address paymentToken,
        uint256 paymentAmount,
        address wallet,
        address verifier
    ) internal returns (uint32) {
        uint32 subscriptionId = COORDINATOR.createSubscription(
            containerId, 1, 0, redundancy, false, paymentToken, paymentAmount, wallet, verifier
        );
        subscriptionInputs[subscriptionId] = inputs;
        return subscriptionId;
    }

    /// @inheritdoc BaseConsumer
    function getContainerInputs(uint32 subscriptionId, uint32, uint32, address)
        external
        view
        virtual
        override
        returns (bytes memory)
    {
        return subscriptionInputs[subscriptionId];
    }
}
