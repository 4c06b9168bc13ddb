// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.19;

/// @title IVerifier
/// @notice infernet-sdk v1.1 `payments/IVerifier.sol`, function for function (same selectors): what the
///         Coordinator calls on a subscription's `verifier` when a paid delivery arrives.
/// @dev The Coordinator asks `isSupportedToken(paymentToken)`, then `fee(paymentToken)`, pays the fee
///      to `getWallet()`, escrows the node's and the consumer's amounts, and calls
///      `requestProofVerification`; the verifier answers with `finalizeProofVerification` on the
///      Coordinator (at once, or later within a week).
interface IVerifier {
    /// @notice Where the Coordinator pays this verifier's fee.
    function getWallet() external view returns (address);

    /// @notice Whether subscriptions paying in `token` (address(0) = ETH) may use this verifier.
    function isSupportedToken(address token) external view returns (bool);

    /// @notice The verification fee in `token`; called after `isSupportedToken`.
    function fee(address token) external view returns (uint256);

    /// @notice Called by the Coordinator with the delivered proof; the fee is already paid.
    function requestProofVerification(uint32 subscriptionId, uint32 interval, address node, bytes calldata proof)
        external;

    /// @notice ETH fees arrive here.
    receive() external payable;
}

/// @title IProofFinalizer
/// @notice The Coordinator function a verifier answers through (infernet-sdk v1.1 `Coordinator`).
interface IProofFinalizer {
    function finalizeProofVerification(uint32 subscriptionId, uint32 interval, address node, bool valid) external;
}
