// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.19;

import {IRegistry} from "../interfaces/IRegistry.sol";
import {IProofFinalizer, IVerifier} from "../interfaces/IVerifier.sol";
import {LLMAttestation} from "./LLMAttestation.sol";

/// @dev The ERC-20 call `withdraw` needs.
interface IERC20Transfer {
    function transfer(address to, uint256 amount) external returns (bool);
}

/// @title LLMAttestationVerifier
/// @notice An infernet-sdk v1.1 `IVerifier` for infernet-tgi attestations: name it as a subscription's
///         `verifier` (with a payment) and the Coordinator hands it each delivery's proof; it checks the
///         signature (canonical, low s, v 27/28), that the signer is an allowed attester and that the
///         signed model is an allowed model, and answers `finalizeProofVerification(..., valid)` at once.
///         `valid = false` slashes the node's escrow to the consumer; `true` releases the payment.
/// @dev What it checks and what it cannot: the SDK passes a verifier only (subscriptionId, interval,
///      node, proof), never the delivered input and output. So this contract checks who signed and for
///      which model; it cannot check that the signed inputHash / outputHash are those of the bytes the
///      consumer received, nor that the input is the question the consumer asked. The consumer must
///      check those bindings itself (`LLMAttestation.check` in `_receiveCompute`, as
///      `AttestedLLMPrompter` does); a node that swaps the output keeps a valid proof here and is
///      refused there.
contract LLMAttestationVerifier is IVerifier {
    /// @notice The only caller of `requestProofVerification`, and the contract answered.
    address public immutable COORDINATOR;

    /// @notice May change attesters, models and fees, and withdraw fees.
    address public owner;

    /// @notice Signers whose attestations are valid.
    mapping(address => bool) public isAttester;

    /// @notice keccak256(bytes(model id)) of models whose attestations are valid.
    mapping(bytes32 => bool) public isAllowedModel;

    mapping(address => bool) private _supported;
    mapping(address => uint256) private _fees;

    /// @notice A proof was judged and the Coordinator told; `status` says why when `valid` is false.
    event ProofVerified(
        uint32 indexed subscriptionId,
        uint32 indexed interval,
        address indexed node,
        bool valid,
        LLMAttestation.Status status,
        address signer
    );
    event AttesterSet(address indexed attester, bool allowed);
    event ModelSet(bytes32 indexed modelHash, bool allowed);
    event FeeSet(address indexed token, bool supported, uint256 fee);

    /// @notice `requestProofVerification` called by anything but the Coordinator.
    error NotCoordinator();
    /// @notice An owner-only function called by someone else.
    error NotOwner();
    /// @notice A fee withdrawal failed.
    error TransferFailed();

    /// @param registry Infernet Registry (resolves the Coordinator)
    /// @param attesters initial allowed attesters (e.g. the address in a container's /service-resources)
    /// @param modelIds initial allowed model ids (as the container names them)
    constructor(address registry, address[] memory attesters, string[] memory modelIds) {
        COORDINATOR = IRegistry(registry).COORDINATOR();
        owner = msg.sender;
        for (uint256 i = 0; i < attesters.length; i++) {
            _setAttester(attesters[i], true);
        }
        for (uint256 i = 0; i < modelIds.length; i++) {
            _setModel(LLMAttestation.hashModel(modelIds[i]), true);
        }
    }

    modifier onlyOwner() {
        if (msg.sender != owner) {
            revert NotOwner();
        }
        _;
    }

    /// @inheritdoc IVerifier
    function getWallet() external view returns (address) {
        return address(this);
    }

    /// @inheritdoc IVerifier
    function isSupportedToken(address token) external view returns (bool) {
        return _supported[token];
    }

    /// @inheritdoc IVerifier
    function fee(address token) external view returns (uint256) {
        return _fees[token];
    }

    /// @inheritdoc IVerifier
    function requestProofVerification(uint32 subscriptionId, uint32 interval, address node, bytes calldata proof)
        external
    {
        if (msg.sender != COORDINATOR) {
            revert NotCoordinator();
        }
        (LLMAttestation.Status status, LLMAttestation.Attestation memory attestation) = LLMAttestation.recover(proof);
        if (status == LLMAttestation.Status.Valid && !isAttester[attestation.signer]) {
            status = LLMAttestation.Status.WrongSigner;
        }
        if (status == LLMAttestation.Status.Valid && !isAllowedModel[attestation.modelHash]) {
            status = LLMAttestation.Status.ModelMismatch;
        }
        bool valid = status == LLMAttestation.Status.Valid;
        emit ProofVerified(subscriptionId, interval, node, valid, status, attestation.signer);
        IProofFinalizer(COORDINATOR).finalizeProofVerification(subscriptionId, interval, node, valid);
    }

    function setAttester(address attester, bool allowed) external onlyOwner {
        _setAttester(attester, allowed);
    }

    function setModel(string calldata modelId, bool allowed) external onlyOwner {
        _setModel(LLMAttestation.hashModel(modelId), allowed);
    }

    /// @notice Accept payments in `token` (address(0) = ETH) for a fee of `amount`.
    function setFee(address token, bool supported, uint256 amount) external onlyOwner {
        _supported[token] = supported;
        _fees[token] = amount;
        emit FeeSet(token, supported, amount);
    }

    /// @notice Send collected fees (`token` address(0) = ETH) to `to`.
    function withdraw(address token, address to, uint256 amount) external onlyOwner {
        bool ok;
        if (token == address(0)) {
            (ok,) = payable(to).call{value: amount}("");
        } else {
            ok = IERC20Transfer(token).transfer(to, amount);
        }
        if (!ok) {
            revert TransferFailed();
        }
    }

    function setOwner(address newOwner) external onlyOwner {
        owner = newOwner;
    }

    /// @inheritdoc IVerifier
    receive() external payable {}

    function _setAttester(address attester, bool allowed) private {
        isAttester[attester] = allowed;
        emit AttesterSet(attester, allowed);
    }

    function _setModel(bytes32 modelHash, bool allowed) private {
        isAllowedModel[modelHash] = allowed;
        emit ModelSet(modelHash, allowed);
    }
}
