// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.19;

import {CallbackConsumer} from "infernet-sdk/consumer/Callback.sol";
import {LLMAttestation} from "../attestation/LLMAttestation.sol";
import {AnswerBook} from "./AnswerBook.sol";

/// @title AttestedLLMPrompter
/// @notice Like `LLMPrompter.promptLLM`, but an answer is stored only when its proof shows that an allowed
///         attester signed exactly this question, this answer and the configured model; anything else
///         emits `AnswerRejected` and stores nothing. The check runs in `_receiveCompute`, so it costs no
///         verifier fee; `setVerification` adds the SDK's paid flow (an `IVerifier`, e.g.
///         `LLMAttestationVerifier`) on top, for payment and slashing.
/// @dev The bindings only the consumer can check: the proof's inputHash must be keccak256 of the
///      delivered raw input AND of the inputs this contract asked for (a signed answer to another question
///      is refused), its outputHash keccak256 of the delivered raw output.
contract AttestedLLMPrompter is CallbackConsumer, AnswerBook {
    /// @notice Container id (comma-joined for a chain) the node runs.
    string public containerId;

    /// @notice keccak256(bytes(model id)) an answer must be signed for.
    bytes32 public immutable modelHash;

    /// @notice May change attesters and the verification payment.
    address public immutable owner;

    /// @notice Signers whose answers are accepted.
    mapping(address => bool) public isAttester;

    /// @notice subscriptionId => keccak256 of the inputs asked (what the proof's inputHash must be).
    mapping(uint32 => bytes32) public questionHash;

    /// @notice The SDK verification flow for new prompts: none while `verifier` is address(0).
    struct Verification {
        address verifier;
        address paymentToken;
        uint256 paymentAmount;
        address wallet;
    }

    Verification public verification;

    event PromptRequested(uint32 indexed subscriptionId, address indexed requester, string prompt);

    /// @notice A delivery whose proof did not check out; nothing was stored.
    event AnswerRejected(
        uint32 indexed subscriptionId,
        uint32 indexed interval,
        address indexed node,
        LLMAttestation.Status status,
        address signer
    );

    event AttesterSet(address indexed attester, bool allowed);

    error EmptyPrompt();
    error NotOwner();

    /// @param registry Infernet Registry (resolves the Coordinator)
    /// @param containerId_ container id(s) as configured on the node
    /// @param modelId the model id the container signs for (its TGI_INF_MODEL, or the engine's model_id)
    /// @param attesters allowed attester addresses (published on the container's /service-resources)
    constructor(address registry, string memory containerId_, string memory modelId, address[] memory attesters)
        CallbackConsumer(registry)
    {
        containerId = containerId_;
        modelHash = LLMAttestation.hashModel(modelId);
        owner = msg.sender;
        for (uint256 i = 0; i < attesters.length; i++) {
            isAttester[attesters[i]] = true;
            emit AttesterSet(attesters[i], true);
        }
    }

    /// @notice Asks the LLM `prompt` once. Returns the subscription id.
    function promptLLM(string calldata prompt) external returns (uint32) {
        if (bytes(prompt).length == 0) {
            revert EmptyPrompt();
        }
        bytes memory inputs = abi.encode(prompt);
        Verification memory v = verification;
        uint32 subscriptionId =
            _requestCompute(containerId, inputs, 1, v.paymentToken, v.paymentAmount, v.wallet, v.verifier);
        questionHash[subscriptionId] = keccak256(inputs);
        emit PromptRequested(subscriptionId, msg.sender, prompt);
        return subscriptionId;
    }

    function setAttester(address attester, bool allowed) external {
        if (msg.sender != owner) {
            revert NotOwner();
        }
        isAttester[attester] = allowed;
        emit AttesterSet(attester, allowed);
    }

    /// @notice Use the SDK's paid verification for new prompts (`verifier` address(0) = none). The
    ///         SDK calls a verifier only for paid subscriptions: `paymentAmount` must be above 0 and
    ///         `wallet` an Infernet Wallet that approved this contract as spender.
    function setVerification(address verifier, address paymentToken, uint256 paymentAmount, address wallet)
        external
    {
        if (msg.sender != owner) {
            revert NotOwner();
        }
        verification = Verification(verifier, paymentToken, paymentAmount, wallet);
    }

    function _receiveCompute(
        uint32 subscriptionId,
        uint32 interval,
        uint16 redundancy,
        address node,
        bytes calldata input,
        bytes calldata output,
        bytes calldata proof,
        bytes32,
        uint256
    ) internal override {
        if (output.length != 0) {
            (LLMAttestation.Status status, address signer) = _judge(subscriptionId, input, output, proof);
            if (status != LLMAttestation.Status.Valid) {
                emit AnswerRejected(subscriptionId, interval, node, status, signer);
                return;
            }
        }
        // An empty output (the node's pre-flight simulation) is recorded as an EmptyDelivery, not stored.
        _recordAnswer(subscriptionId, interval, redundancy, node, output);
    }

    function _judge(uint32 subscriptionId, bytes calldata input, bytes calldata output, bytes calldata proof)
        private
        view
        returns (LLMAttestation.Status status, address signer)
    {
        LLMAttestation.Attestation memory attestation;
        (status, attestation) = LLMAttestation.checkHashes(input, output, proof, modelHash);
        if (status == LLMAttestation.Status.Valid && attestation.inputHash != questionHash[subscriptionId]) {
            status = LLMAttestation.Status.InputMismatch;
        }
        if (status == LLMAttestation.Status.Valid && !isAttester[attestation.signer]) {
            status = LLMAttestation.Status.WrongSigner;
        }
        return (status, attestation.signer);
    }
}
