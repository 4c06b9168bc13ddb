// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.19;

/// @title Delegator (offline stand-in for infernet-sdk v1.1 `pattern/Delegator.sol`)
/// @notice Names the EOA whose EIP-712 signature may create subscriptions owned by this contract
///         (delegated subscriptions, docs/protocol.md §2.4). The Coordinator checks the recovered signer
///         against `getSigner()`.
abstract contract Delegator {
    address private signer;

    constructor(address _signer) {
        signer = _signer;
    }

    /// @notice The delegated signer the Coordinator compares recovered signatures against.
    function getSigner() external view returns (address) {
        return signer;
    }

    /// @notice Replace the delegated signer (inheritors decide who may call this).
    function _updateSigner(address _signer) internal {
        signer = _signer;
    }
}
