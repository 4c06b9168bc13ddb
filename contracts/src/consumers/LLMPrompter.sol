// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.19;

import {CallbackConsumer} from "infernet-sdk/consumer/Callback.sol";
import {Delegator} from "infernet-sdk/pattern/Delegator.sol";
import {AnswerBook} from "./AnswerBook.sol";

/// @title LLMPrompter
/// @notice One-off LLM prompts answered by the `tgi_client_inference_service` container: call
///         `promptLLM("...")` (or `chatWithLLM(abi.encode("..."))`), then read `latestAnswer(id)` or
///         watch `AnswerReceived`. Also a `Delegator`, so its signer can create delegated
///         subscriptions off-chain through a node's REST API (docs/protocol.md §2.4).
contract LLMPrompter is CallbackConsumer, Delegator, AnswerBook {
    /// @notice Container id (comma-joined for a chain) the node runs; hashed by the Coordinator.
    string public containerId;

    /// @notice May change the delegated signer.
    address public immutable owner;

    /// @notice A prompt was sent; the node answers subscription `subscriptionId`.
    event PromptRequested(uint32 indexed subscriptionId, address indexed requester, string prompt);

    /// @notice An empty prompt was given; the container would refuse it anyway.
    error EmptyPrompt();

    /// @notice Caller is not the owner.
    error NotOwner();

    /// @notice Redundancy must be at least 1.
    error InvalidRedundancy();

    /// @notice `chatWithLLM` inputs are not the canonical `abi.encode(string)`.
    error MalformedInputs();

    /// @param registry Infernet Registry (resolves the Coordinator)
    /// @param containerId_ container id(s) as configured on the node, e.g. "tgi_client_inference_service"
    /// @param signer EOA allowed to sign delegated subscriptions for this contract
    constructor(address registry, string memory containerId_, address signer)
        CallbackConsumer(registry)
        Delegator(signer)
    {
        containerId = containerId_;
        owner = msg.sender;
    }

    /// @notice Asks the LLM `prompt` once, answered by one node. Returns the subscription id.
    function promptLLM(string calldata prompt) external returns (uint32) {
        return _prompt(prompt, abi.encode(prompt), 1);
    }

    /// @notice Same as `promptLLM`, with `redundancy` distinct nodes answering.
    function promptLLMRedundant(string calldata prompt, uint16 redundancy) external returns (uint32) {
        return _prompt(prompt, abi.encode(prompt), redundancy);
    }

    /// @notice Asks with generation parameters as a JSON object in TGI names, e.g.
    ///         `{"max_new_tokens": 64, "temperature": 0.7}`; the container reads
    ///         `abi.encode(string prompt, string parametersJson)`.
    function promptLLMWithParameters(string calldata prompt, string calldata parametersJson)
        external
        returns (uint32)
    {
        return _prompt(prompt, abi.encode(prompt, parametersJson), 1);
    }

    /// @notice The seed's interface: `inputs` must be exactly `abi.encode(string prompt)`.
    function chatWithLLM(bytes calldata inputs) external returns (uint32) {
        if (inputs.length < 64 || uint256(bytes32(inputs[0:32])) != 0x20) {
            revert MalformedInputs();
        }
        string memory prompt = abi.decode(inputs, (string));
        // Re-encoding catches trailing bytes and non-canonical padding the container would refuse.
        if (keccak256(abi.encode(prompt)) != keccak256(inputs)) {
            revert MalformedInputs();
        }
        return _prompt(prompt, inputs, 1);
    }

    /// @notice Replace the delegated signer.
    function setSigner(address signer) external {
        if (msg.sender != owner) {
            revert NotOwner();
        }
        _updateSigner(signer);
    }

    function _prompt(string memory prompt, bytes memory inputs, uint16 redundancy) private returns (uint32) {
        if (bytes(prompt).length == 0) {
            revert EmptyPrompt();
        }
        if (redundancy == 0) {
            revert InvalidRedundancy();
        }
        uint32 subscriptionId =
            _requestCompute(containerId, inputs, redundancy, address(0), 0, address(0), address(0));
        emit PromptRequested(subscriptionId, msg.sender, prompt);
        return subscriptionId;
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
