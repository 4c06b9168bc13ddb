// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.19;

/// @title IRegistry
/// @notice The getters of infernet-sdk v1.1 `Registry` that consumers and nodes read. The registry is
///         the one address a consumer is deployed with; everything else is resolved through it.
interface IRegistry {
    function COORDINATOR() external view returns (address);

    function INBOX() external view returns (address);

    function READER() external view returns (address);

    function FEE() external view returns (address);

    function WALLET_FACTORY() external view returns (address);
}
