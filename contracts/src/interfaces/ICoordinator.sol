// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.19;

/// @notice infernet-sdk v1.1 `Subscription`, field for field (the EIP-712 type string and the ABI
///         of `getSubscription` / `createSubscriptionDelegatee` depend on this exact order).
struct Subscription {
    address owner;
    uint32 activeAt;
    uint32 period;
    uint32 frequency;
    uint16 redundancy;
    bytes32 containerId;
    bool lazy;
    address payable verifier;
    uint256 paymentAmount;
    address paymentToken;
    address payable wallet;
}

/// @title ICoordinator
/// @notice The part of infernet-sdk v1.1 `Coordinator` that consumers call. Selectors are identical to
///         the SDK's, so a consumer built against this interface talks to the real Coordinator.
/// @dev Use it when you cannot (or do not want to) vendor infernet-sdk; see docs/onchain.md.
interface ICoordinator {
    event SubscriptionCreated(uint32 indexed id);
    event SubscriptionCancelled(uint32 indexed id);
    event SubscriptionFulfilled(uint32 indexed id, address indexed node);

    function id() external view returns (uint32);

    function getSubscription(uint32 subscriptionId) external view returns (Subscription memory);

    function createSubscription(
        string memory containerId,
        uint32 frequency,
        uint32 period,
        uint16 redundancy,
        bool lazy,
        address paymentToken,
        uint256 paymentAmount,
        address wallet,
        address verifier
    ) external returns (uint32);

    function cancelSubscription(uint32 subscriptionId) external;

    function getSubscriptionInterval(uint32 activeAt, uint32 period) external view returns (uint32);

    function deliverCompute(
        uint32 subscriptionId,
        uint32 deliveryInterval,
        bytes calldata input,
        bytes calldata output,
        bytes calldata proof,
        address nodeWallet
    ) external;

    function redundancyCount(bytes32 key) external view returns (uint16);

    function nodeResponded(bytes32 key) external view returns (bool);
}
