"""The compile step and ABI identity with infernet-sdk v1.1 where our contracts meet it.

Golden selectors come from the SDK's own NatSpec (`4-byte signature: 0x...`) and from the function
signatures docs/protocol.md §2 lists; a drift in a parameter type or order changes them.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from eth_utils import keccak

import chain

SDK_FUNCTIONS = {
    "LLMPrompter": [
        "rawReceiveCompute(uint32,uint32,uint16,address,bytes,bytes,bytes,bytes32,uint256)",
        "getContainerInputs(uint32,uint32,uint32,address)",
        "getSigner()",
        "promptLLM(string)",
        "chatWithLLM(bytes)",
    ],
    "RecurringPrompter": [
        "rawReceiveCompute(uint32,uint32,uint16,address,bytes,bytes,bytes,bytes32,uint256)",
        "getContainerInputs(uint32,uint32,uint32,address)",
    ],
    "TestCoordinator": [
        "createSubscription(string,uint32,uint32,uint16,bool,address,uint256,address,address)",
        "cancelSubscription(uint32)",
        "getSubscription(uint32)",
        "getSubscriptionInterval(uint32,uint32)",
        "deliverCompute(uint32,uint32,bytes,bytes,bytes,address)",
        "id()",
        "redundancyCount(bytes32)",
        "nodeResponded(bytes32)",
        "maxSubscriberNonce(address)",
        "delegateCreatedIds(bytes32)",
        "createSubscriptionDelegatee(uint32,uint32,"
        "(address,uint32,uint32,uint32,uint16,bytes32,bool,address,uint256,address,address),"
        "uint8,bytes32,bytes32)",
        "deliverComputeDelegatee(uint32,uint32,"
        "(address,uint32,uint32,uint32,uint16,bytes32,bool,address,uint256,address,address),"
        "uint8,bytes32,bytes32,uint32,bytes,bytes,bytes,address)",
    ],
    "TestRegistry": ["COORDINATOR()", "INBOX()", "READER()", "FEE()", "WALLET_FACTORY()"],
}

# error name -> selector documented in infernet-sdk v1.1 sources
SDK_ERRORS = {
    "NotCoordinator()": "9ec853e6",
    "IntervalMismatch()": "4db310c3",
    "IntervalCompleted()": "2f4ca85b",
    "NodeRespondedAlready()": "88a21e4f",
    "SubscriptionNotFound()": "1a00354f",
    "NotSubscriptionOwner()": "a7fba711",
    "SubscriptionCompleted()": "ae6704a7",
    "SubscriptionNotActive()": "efb74efe",
    "SignerMismatch()": "10c74b03",
    "SignatureExpired()": "0819bdcd",
}


def test_artifacts_built_with_pinned_solc_and_explicit_evm_version() -> None:
    chain.compile_contracts()
    package = json.loads((chain.ROOT / "package.json").read_text())
    lock = json.loads((chain.ROOT / "package-lock.json").read_text())
    pinned = package["dependencies"]["solc"]
    assert lock["packages"]["node_modules/solc"]["version"] == pinned
    for name in SDK_FUNCTIONS:
        art = chain.load_artifact(name)
        assert art["compiler"].startswith(f"solc {pinned}+")
        assert art["evmVersion"] == "cancun"
    assert chain.load_artifact("LLMPrompter")["bytecode"].startswith("0x60")


@pytest.mark.parametrize("name", sorted(SDK_FUNCTIONS))
def test_selectors_match_sdk_signatures(name: str) -> None:
    ids = chain.load_artifact(name)["methodIdentifiers"]
    for signature in SDK_FUNCTIONS[name]:
        assert ids.get(signature) == keccak(text=signature)[:4].hex(), signature


def test_error_selectors_match_sdk() -> None:
    for signature, selector in SDK_ERRORS.items():
        assert keccak(text=signature)[:4].hex() == selector
        name = signature.split("(")[0]
        declared = [
            item for art in ("LLMPrompter", "TestCoordinator")
            for item in chain.load_artifact(art)["abi"]
            if item["type"] == "error" and item["name"] == name
        ]
        assert declared and declared[0]["inputs"] == [], signature


def test_compile_reports_solidity_errors() -> None:
    """A broken source fails the build with solc's message instead of leaving stale artifacts."""
    bad = chain.ROOT / "contracts" / "test" / "fixtures" / "_Broken_test_only.sol"
    bad.write_text("// SPDX-License-Identifier: Apache-2.0\npragma solidity ^0.8.19;\ncontract B { x }\n")
    try:
        proc = subprocess.run(
            ["node", str(chain.COMPILER)], cwd=chain.ROOT, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 1
        assert "_Broken_test_only.sol" in proc.stderr and "compilation failed" in proc.stderr
    finally:
        bad.unlink()
    chain.compile_contracts()  # back to the real sources (cached hash unchanged)
