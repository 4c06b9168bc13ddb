"""ABI identity with infernet-sdk v1.1 for the verification flow: `IVerifier`, the Coordinator's
`finalizeProofVerification` branch, and the Wallet / WalletFactory calls the Coordinator makes.

Error selectors are the ones the SDK documents in its NatSpec (`4-byte signature: 0x...`); a drift in a
name, parameter type or order changes a selector and fails here.
"""

from __future__ import annotations

import pytest
from eth_utils import keccak

import chain

IVERIFIER = [
    "getWallet()",
    "isSupportedToken(address)",
    "fee(address)",
    "requestProofVerification(uint32,uint32,address,bytes)",
]

SDK_FUNCTIONS = {
    "LLMAttestationVerifier": IVERIFIER,
    "DeferredVerifier": IVERIFIER,
    "TestCoordinator": ["finalizeProofVerification(uint32,uint32,address,bool)", "proofRequests(bytes32)"],
    "TestWallet": [
        "cTransfer(address,address,address,uint256)",
        "cLock(address,address,uint256)",
        "cUnlock(address,address,uint256)",
        "approve(address,address,uint256)",
        "allowance(address,address)",
        "withdraw(address,uint256)",
        "owner()",
    ],
    "TestWalletFactory": ["isValidWallet(address)", "createWallet(address)"],
    "AttestedLLMPrompter": [
        "rawReceiveCompute(uint32,uint32,uint16,address,bytes,bytes,bytes,bytes32,uint256)",
        "getContainerInputs(uint32,uint32,uint32,address)",
        "promptLLM(string)",
    ],
}

# Coordinator errors of the payment / verification branch, as infernet-sdk v1.1 documents them.
SDK_ERRORS = {
    "InvalidWallet()": "23455ba1",
    "UnauthorizedVerifier()": "b9857aa1",
    "ProofRequestNotFound()": "1d68b37c",
    "UnsupportedVerifierToken()": "e2372799",
}


@pytest.mark.parametrize("name", sorted(SDK_FUNCTIONS))
def test_selectors_match_sdk_signatures(name: str) -> None:
    chain.compile_contracts()
    ids = chain.load_artifact(name)["methodIdentifiers"]
    for signature in SDK_FUNCTIONS[name]:
        assert ids.get(signature) == keccak(text=signature)[:4].hex(), signature


def test_verifiers_accept_eth() -> None:
    for name in ("LLMAttestationVerifier", "DeferredVerifier", "TestWallet"):
        abi = chain.load_artifact(name)["abi"]
        assert any(item["type"] == "receive" for item in abi), name


def test_verification_error_selectors_match_sdk() -> None:
    abi = chain.load_artifact("TestCoordinator")["abi"]
    for signature, selector in SDK_ERRORS.items():
        assert keccak(text=signature)[:4].hex() == selector
        name = signature.split("(")[0]
        declared = [item for item in abi if item["type"] == "error" and item["name"] == name]
        assert declared and declared[0]["inputs"] == [], signature


def test_proof_request_layout_matches_sdk() -> None:
    """`proofRequests(key)` returns the SDK's ProofRequest fields in order: expiry, nodeWallet, escrowed."""
    abi = chain.load_artifact("TestCoordinator")["abi"]
    (getter,) = [item for item in abi if item.get("name") == "proofRequests"]
    assert [(o["name"], o["type"]) for o in getter["outputs"]] == [
        ("expiry", "uint32"),
        ("nodeWallet", "address"),
        ("consumerEscrowed", "uint256"),
    ]
