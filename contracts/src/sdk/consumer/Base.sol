// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.19;

import {ICoordinator} from "../../interfaces/ICoordinator.sol";
import {IRegistry} from "../../interfaces/IRegistry.sol";

/// @title BaseConsumer (offline stand-in for infernet-sdk v1.1 `consumer/Base.sol`)
/// @notice Same external ABI and internal hooks as the SDK's BaseConsumer, written against the minimal
///         interfaces in `src/interfaces` so the consumers compile without the SDK. Swap the
///         `infernet-sdk/` remapping to the real library and the consumers compile unchanged.
/// @dev Only `rawReceiveCompute` is external; it accepts calls from the registry's Coordinator only.
abstract contract BaseConsumer {
    /// @notice Coordinator resolved from the registry at construction.
    ICoordinator internal immutable COORDINATOR;

    /// @notice Inbox resolved from the registry at construction (lazy subscriptions read from it).
    address internal immutable INBOX;

    /// @notice `rawReceiveCompute` called by anything but the Coordinator. Selector `0x9ec853e6`.
    error NotCoordinator();

    constructor(address registry) {
        COORDINATOR = ICoordinator(IRegistry(registry).COORDINATOR());
        INBOX = IRegistry(registry).INBOX();
    }

    /// @notice Called with the delivery once the caller is known to be the Coordinator.
    /// @param redundancy deliveries for this interval including this one
    /// @param containerId `bytes32(0)` for eager delivery; for lazy delivery the Inbox key
    /// @param index Inbox index for lazy delivery, else 0
    function _receiveCompute(
        uint32 subscriptionId,
        uint32 interval,
        uint16 redundancy,
        address node,
        bytes calldata input,
        bytes calldata output,
        bytes calldata proof,
        bytes32 containerId,
        uint256 index
    ) internal virtual {}

    /// @notice Container inputs the node reads before running the container; empty by default.
    function getContainerInputs(uint32 subscriptionId, uint32 interval, uint32 timestamp, address caller)
        external
        view
        virtual
        returns (bytes memory)
    {}

    /// @notice Delivery entry point; the Coordinator is the only allowed caller.
    function rawReceiveCompute(
        uint32 subscriptionId,
        uint32 interval,
        uint16 redundancy,
        address node,
        bytes calldata input,
        bytes calldata output,
        bytes calldata proof,
        bytes32 containerId,
        uint256 index
    ) external {
        if (msg.sender != address(COORDINATOR)) {
            revert NotCoordinator();
        }
        _receiveCompute(subscriptionId, interval, redundancy, node, input, output, proof, containerId, index);
    }
}
