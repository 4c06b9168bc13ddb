// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.19;

/// @title LLMAttestation
/// @notice Checks the `proof` the infernet-tgi container attaches when it runs with an attestation key:
///         `abi.encode(bytes32 inputHash, bytes32 outputHash, bytes32 modelHash, bytes signature)`, where the
///         65-byte (r, s, v) signature is EIP-712 over
///         `Attestation(bytes32 inputHash,bytes32 outputHash,bytes32 modelHash)` in the domain
///         `{name: "InfernetTGIAttestation", version: "1", chainId: block.chainid}`.
/// @dev Use `check` in a consumer's `_receiveCompute` (free: no verifier, no payment) with the delivered
///      `input`, `output` and `proof`; use `recover` where only the proof is known (an `IVerifier`).
///      Nothing here reverts on a bad proof: every outcome is a `Status`, so a caller can refuse, record
///      or finalize `false` instead of failing the node's transaction.
///
///      A valid attestation says that the attester's key vouched for (input bytes, output bytes, model id)
///      on this chain. It does not prove the model computed the output.
library LLMAttestation {
    /// @notice Outcome of a check; `Valid` is the only good one.
    enum Status {
        Valid,
        MalformedProof, // not the canonical abi.encode(bytes32, bytes32, bytes32, bytes(65))
        InputMismatch, // keccak256(raw input) differs from the signed inputHash (or the expected one)
        OutputMismatch, // keccak256(raw output) differs from the signed outputHash
        ModelMismatch, // the signed modelHash is not the expected model
        MalleableSignature, // s in the upper half of the curve order (the other form of a valid signature)
        BadSignature, // v not 27/28, or ecrecover finds no signer
        WrongSigner // the signer is not the expected attester
    }

    bytes32 internal constant DOMAIN_TYPEHASH = keccak256("EIP712Domain(string name,string version,uint256 chainId)");
    bytes32 internal constant ATTESTATION_TYPEHASH =
        keccak256("Attestation(bytes32 inputHash,bytes32 outputHash,bytes32 modelHash)");
    bytes32 internal constant NAME_HASH = keccak256("InfernetTGIAttestation");
    bytes32 internal constant VERSION_HASH = keccak256("1");

    /// @dev secp256k1 order / 2: signatures with a larger s are the malleable twin (EIP-2).
    uint256 internal constant HALF_ORDER = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;

    /// @dev 4 head words + signature length word + 65 bytes padded to 96.
    uint256 internal constant PROOF_LENGTH = 256;

    /// @notice What a proof states.
    struct Attestation {
        bytes32 inputHash;
        bytes32 outputHash;
        bytes32 modelHash;
        address signer;
    }

    /// @notice The EIP-712 domain separator on this chain.
    function domainSeparator() internal view returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, block.chainid));
    }

    /// @notice The digest the container signs for (inputHash, outputHash, modelHash) on this chain.
    function digest(bytes32 inputHash, bytes32 outputHash, bytes32 modelHash) internal view returns (bytes32) {
        bytes32 structHash = keccak256(abi.encode(ATTESTATION_TYPEHASH, inputHash, outputHash, modelHash));
        return keccak256(abi.encodePacked("\x19\x01", domainSeparator(), structHash));
    }

    /// @notice keccak256(bytes(modelId)): the model hash the container signs for a model id.
    function hashModel(string memory modelId) internal pure returns (bytes32) {
        return keccak256(bytes(modelId));
    }

    /// @notice Decodes `proof` and recovers its signer, without judging who the signer is.
    /// @return status `Valid`, `MalformedProof`, `MalleableSignature` or `BadSignature`
    /// @return attestation the signed hashes and the recovered signer (zero unless `Valid`)
    function recover(bytes calldata proof) internal view returns (Status status, Attestation memory attestation) {
        // Exact canonical layout: a fixed length, the bytes offset 0x80, a 65-byte signature, zero padding.
        if (
            proof.length != PROOF_LENGTH || uint256(bytes32(proof[96:128])) != 0x80
                || uint256(bytes32(proof[128:160])) != 65 || bytes31(proof[225:256]) != bytes31(0)
        ) {
            return (Status.MalformedProof, attestation);
        }
        attestation.inputHash = bytes32(proof[0:32]);
        attestation.outputHash = bytes32(proof[32:64]);
        attestation.modelHash = bytes32(proof[64:96]);
        bytes32 r = bytes32(proof[160:192]);
        bytes32 s = bytes32(proof[192:224]);
        uint8 v = uint8(proof[224]);
        if (uint256(s) > HALF_ORDER) {
            return (Status.MalleableSignature, attestation);
        }
        if (v != 27 && v != 28) {
            return (Status.BadSignature, attestation);
        }
        address signer =
            ecrecover(digest(attestation.inputHash, attestation.outputHash, attestation.modelHash), v, r, s);
        if (signer == address(0)) {
            return (Status.BadSignature, attestation);
        }
        attestation.signer = signer;
        return (Status.Valid, attestation);
    }

    /// @notice Full check of a delivery: the proof is well formed and signed by `attester`, it names
    ///         `expectedModelHash`, and its hashes are those of the delivered raw input and raw output.
    /// @param input the delivered `input` = abi.encode(bytes rawInput, bytes processedInput)
    /// @param output the delivered `output` = abi.encode(bytes rawOutput, bytes processedOutput)
    /// @dev Reverts only when `input` / `output` are not (bytes, bytes) encodings (not a container answer).
    function check(
        bytes calldata input,
        bytes calldata output,
        bytes calldata proof,
        bytes32 expectedModelHash,
        address attester
    ) internal view returns (Status status, Attestation memory attestation) {
        (status, attestation) = checkHashes(input, output, proof, expectedModelHash);
        if (status == Status.Valid && attestation.signer != attester) {
            status = Status.WrongSigner;
        }
    }

    /// @notice `check` without the signer comparison, for callers that hold a set of attesters: the
    ///         caller must still test `attestation.signer` (the status is `Valid` for any signer).
    function checkHashes(bytes calldata input, bytes calldata output, bytes calldata proof, bytes32 expectedModelHash)
        internal
        view
        returns (Status status, Attestation memory attestation)
    {
        (status, attestation) = recover(proof);
        if (status != Status.Valid) {
            return (status, attestation);
        }
        (bytes memory rawInput,) = abi.decode(input, (bytes, bytes));
        (bytes memory rawOutput,) = abi.decode(output, (bytes, bytes));
        if (keccak256(rawInput) != attestation.inputHash) {
            return (Status.InputMismatch, attestation);
        }
        if (keccak256(rawOutput) != attestation.outputHash) {
            return (Status.OutputMismatch, attestation);
        }
        if (attestation.modelHash != expectedModelHash) {
            return (Status.ModelMismatch, attestation);
        }
        return (Status.Valid, attestation);
    }
}
