"""Attestation contracts on anvil: the library against golden vectors and tampered proofs, the SDK's
paid verification flow through `LLMAttestationVerifier`, and `AttestedLLMPrompter`'s own check.

Proofs are made by the container's own signing code (`infernet_tgi.attestation`); the end-to-end file
runs the real container instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from attestkit import (
    PAYMENT,
    PROTOCOL_FEE_BPS,
    VERIFIER_FEE,
    AttestedStack,
    deploy_attested,
    new_wallet,
    stored,
)
from chainkit import Accounts
from eth_abi import decode, encode
from eth_utils import keccak
from node_codec import container_result, delivery_from_result
from web3 import Web3

import chain
from infernet_tgi.attestation import Attester, attestation_digest, domain_separator

VECTOR = json.loads((Path(__file__).resolve().parents[1] / "attestation_vector.json").read_text())
KEY = bytes.fromhex(VECTOR["private_key"])
MODEL = "tgi/test-model"
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
# LLMAttestation.Status
VALID, MALFORMED, INPUT_MISMATCH, OUTPUT_MISMATCH, MODEL_MISMATCH, MALLEABLE, BAD_SIGNATURE, WRONG_SIGNER = (
    range(8)
)


@pytest.fixture(scope="module")
def attester() -> Attester:
    return Attester(KEY, 31337)  # anvil's chain id


@pytest.fixture(scope="module")
def harness(w3: Web3, accounts: Accounts) -> Any:
    return chain.contract(w3, "AttestationHarness", chain.deploy(w3, accounts.deployer, "AttestationHarness"))


@pytest.fixture(scope="module")
def paid(w3: Web3, accounts: Accounts, attester: Attester) -> AttestedStack:
    return deploy_attested(w3, accounts, [attester.address], MODEL)


def signed_result(attester: Attester, prompt: str, answer: str, model: str = MODEL) -> dict[str, str]:
    """The five keys an attested container returns for this question and answer."""
    result = container_result(answer, encode(["string"], [prompt]).hex())
    proof = attester.attest(bytes.fromhex(result["raw_input"]), bytes.fromhex(result["raw_output"]), model)
    result["proof"] = proof.proof().hex()
    return result


def with_signature(proof_hex: str, change: Callable[[bytes], bytes]) -> str:
    """The proof with its signature bytes replaced by `change(signature)`."""
    i, o, m, sig = decode(["bytes32", "bytes32", "bytes32", "bytes"], bytes.fromhex(proof_hex))
    return encode(["bytes32", "bytes32", "bytes32", "bytes"], [i, o, m, change(sig)]).hex()


def malleable(sig: bytes) -> bytes:
    """The other valid signature of the same digest: s -> n - s, v flipped (ecrecover accepts it)."""
    s = int.from_bytes(sig[32:64], "big")
    return sig[:32] + (N - s).to_bytes(32, "big") + bytes([55 - sig[64]])


# ------------------------------------------------------------------ the library


def test_golden_vector_in_solidity(harness: Any) -> None:
    assert harness.functions.domainSeparator().call() == domain_separator(VECTOR["chain_id"])
    hashes = [bytes.fromhex(VECTOR[k]) for k in ("input_hash", "output_hash", "model_hash")]
    assert harness.functions.digest(*hashes).call() == attestation_digest(VECTOR["chain_id"], *hashes)
    status, (input_hash, output_hash, model_hash, signer) = harness.functions.recover(
        bytes.fromhex(VECTOR["proof"])
    ).call()
    assert (status, signer) == (VALID, VECTOR["attester"])
    assert [input_hash, output_hash, model_hash] == hashes
    result = {**container_result(""), "raw_input": VECTOR["raw_input"], "raw_output": VECTOR["raw_output"]}
    result["proof"] = VECTOR["proof"]
    inp, out, proof = delivery_from_result(result)  # type: ignore[misc]
    check = harness.functions.check(inp, out, proof, VECTOR["model_id"], VECTOR["attester"]).call()
    assert check == [VALID, VECTOR["attester"]]


def test_library_refuses_every_tampering(harness: Any, attester: Attester) -> None:
    good = signed_result(attester, "Capital of France?", "Paris.")
    other_key = Attester(keccak(b"someone else"), 31337)
    cases: dict[str, tuple[dict[str, str], str, int]] = {
        "tampered output": (
            {**good, "raw_output": encode(["string"], ["Lyon."]).hex()},
            MODEL,
            OUTPUT_MISMATCH,
        ),
        "tampered input": (
            {**good, "raw_input": encode(["string"], ["Capital?"]).hex()},
            MODEL,
            INPUT_MISMATCH,
        ),
        "wrong model": (good, "another/model", MODEL_MISMATCH),
        "signer not the attester": (
            signed_result(other_key, "Capital of France?", "Paris."),
            MODEL,
            WRONG_SIGNER,
        ),
        "other chain id": (
            signed_result(Attester(KEY, 1), "Capital of France?", "Paris."),
            MODEL,
            WRONG_SIGNER,
        ),
        "malleable s": ({**good, "proof": with_signature(good["proof"], malleable)}, MODEL, MALLEABLE),
        "v not 27/28": (
            {**good, "proof": with_signature(good["proof"], lambda s: s[:64] + bytes([s[64] - 27]))},
            MODEL,
            BAD_SIGNATURE,
        ),
        "64-byte signature": (
            {**good, "proof": with_signature(good["proof"], lambda s: s[:64])},
            MODEL,
            MALFORMED,
        ),
        "trailing byte": ({**good, "proof": good["proof"] + "00"}, MODEL, MALFORMED),
        "empty proof": ({**good, "proof": ""}, MODEL, MALFORMED),
        "dirty padding": ({**good, "proof": good["proof"][:-2] + "01"}, MODEL, MALFORMED),
    }
    inp, out, proof = delivery_from_result(good)  # type: ignore[misc]
    assert harness.functions.check(inp, out, proof, MODEL, attester.address).call()[0] == VALID
    for name, (result, model, expected) in cases.items():
        inp, out, proof = delivery_from_result(result)  # type: ignore[misc]
        status = harness.functions.check(inp, out, proof, model, attester.address).call()[0]
        assert status == expected, name


# ------------------------------------------------------------------ the SDK's paid verification flow


def test_valid_proof_pays_the_node_and_the_answer_is_stored(
    paid: AttestedStack, accounts: Accounts, attester: Attester
) -> None:
    sub_id = paid.prompt(accounts.stranger, "Capital of France?")
    sub = paid.coordinator.functions.getSubscription(sub_id).call()
    assert sub[7] == paid.verifier.address and sub[8] == PAYMENT  # verifier, paymentAmount
    before = {a: paid.balance(a) for a in (paid.consumer_wallet, paid.node_wallet, paid.verifier.address)}
    fees_before = paid.balance(paid.fee_recipient)
    receipt = paid.deliver(
        accounts.node, sub_id, delivery_from_result(signed_result(attester, "Capital of France?", "Paris."))
    )  # type: ignore[arg-type]
    (verdict,) = chain.events(paid.verifier.events.ProofVerified, receipt)
    assert (verdict["valid"], verdict["status"], verdict["signer"]) == (True, VALID, attester.address)
    assert stored(paid, sub_id) == ["Paris."]
    # The SDK's arithmetic: 2 x fee on the payment, 1 x fee on the verifier's cut, the rest to the node.
    protocol = PAYMENT * 2 * PROTOCOL_FEE_BPS // 10_000 + VERIFIER_FEE * PROTOCOL_FEE_BPS // 10_000
    to_node = PAYMENT - PAYMENT * 2 * PROTOCOL_FEE_BPS // 10_000 - VERIFIER_FEE
    assert paid.balance(paid.node_wallet) - before[paid.node_wallet] == to_node
    assert before[paid.consumer_wallet] - paid.balance(paid.consumer_wallet) == PAYMENT
    assert (
        paid.balance(paid.verifier.address) - before[paid.verifier.address]
        == VERIFIER_FEE - VERIFIER_FEE * PROTOCOL_FEE_BPS // 10_000
    )
    assert paid.balance(paid.fee_recipient) - fees_before == protocol
    key = keccak(encode(["uint32", "uint32", "address"], [sub_id, 1, accounts.node.address]))
    assert paid.coordinator.functions.proofRequests(key).call()[0] == 0  # finalized and deleted


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("signer not allowed", WRONG_SIGNER),
        ("other chain id", WRONG_SIGNER),
        ("malleable signature", MALLEABLE),
        ("wrong model", MODEL_MISMATCH),
    ],
)
def test_bad_proof_slashes_the_node_and_nothing_is_stored(
    paid: AttestedStack, accounts: Accounts, attester: Attester, case: str, status: int
) -> None:
    prompt, answer = f"Question for {case}?", "An answer."
    result = {
        "signer not allowed": lambda: signed_result(Attester(keccak(b"not allowed"), 31337), prompt, answer),
        "other chain id": lambda: signed_result(Attester(KEY, 1), prompt, answer),
        "malleable signature": lambda: {
            **(good := signed_result(attester, prompt, answer)),
            "proof": with_signature(good["proof"], malleable),
        },
        "wrong model": lambda: signed_result(attester, prompt, answer, model="another/model"),
    }[case]()
    sub_id = paid.prompt(accounts.stranger, prompt)
    node_before, consumer_before = paid.balance(paid.node_wallet), paid.balance(paid.consumer_wallet)
    receipt = paid.deliver(accounts.node, sub_id, delivery_from_result(result))  # type: ignore[arg-type]
    (verdict,) = chain.events(paid.verifier.events.ProofVerified, receipt)
    assert (verdict["valid"], verdict["status"]) == (False, status)
    (rejected,) = chain.events(paid.prompter.events.AnswerRejected, receipt)
    assert rejected["status"] == status and stored(paid, sub_id) == []
    # Slashed: the node's escrowed payment goes to the consumer's wallet, which paid only the fees.
    assert node_before - paid.balance(paid.node_wallet) == PAYMENT
    fees = PAYMENT * 2 * PROTOCOL_FEE_BPS // 10_000 + VERIFIER_FEE
    assert paid.balance(paid.consumer_wallet) - consumer_before == PAYMENT - fees


@pytest.mark.parametrize("field", ["raw_output", "raw_input"])
def test_swapped_bytes_pass_the_verifier_but_not_the_consumer(
    paid: AttestedStack, accounts: Accounts, attester: Attester, field: str
) -> None:
    """The verifier sees only the proof, so a node that swaps the delivered bytes keeps a valid proof
    there; the consumer, which holds the bytes and its own question, refuses the answer."""
    prompt = f"Tamper with {field}?"
    result = signed_result(attester, prompt, "Honest answer.")
    result[field] = encode(["string"], ["Swapped."]).hex()
    sub_id = paid.prompt(accounts.stranger, prompt)
    receipt = paid.deliver(accounts.node, sub_id, delivery_from_result(result))  # type: ignore[arg-type]
    assert chain.events(paid.verifier.events.ProofVerified, receipt)[0]["valid"] is True
    (rejected,) = chain.events(paid.prompter.events.AnswerRejected, receipt)
    assert rejected["status"] == (OUTPUT_MISMATCH if field == "raw_output" else INPUT_MISMATCH)
    assert stored(paid, sub_id) == []


def test_answer_to_another_question_is_refused(
    paid: AttestedStack, accounts: Accounts, attester: Attester
) -> None:
    """A genuine signed answer replayed into a subscription that asked something else."""
    sub_id = paid.prompt(accounts.stranger, "What is 2 + 2?")
    replay = signed_result(attester, "Capital of France?", "Paris.")
    receipt = paid.deliver(accounts.node, sub_id, delivery_from_result(replay))  # type: ignore[arg-type]
    assert chain.events(paid.prompter.events.AnswerRejected, receipt)[0]["status"] == INPUT_MISMATCH
    assert stored(paid, sub_id) == []


def test_preflight_simulation_is_not_rejected(paid: AttestedStack, accounts: Accounts) -> None:
    """The node's empty pre-delivery call must not revert (it would drop the job) nor store anything."""
    sub_id = paid.prompt(accounts.stranger, "Simulated?")
    call = paid.prompter.functions.rawReceiveCompute(
        sub_id, 1, 1, accounts.node.address, b"", b"\0" * 32, b"", b"\0" * 32, 0
    )
    assert call.call({"from": paid.coordinator.address}) == []


def test_verifier_answers_only_the_coordinator(paid: AttestedStack, accounts: Accounts) -> None:
    call = paid.verifier.functions.requestProofVerification(
        1, 1, accounts.node.address, bytes.fromhex(VECTOR["proof"])
    )
    with pytest.raises(chain.ChainError, match="reverted"):
        chain.transact(paid.w3, accounts.stranger, call, "requestProofVerification")


# ------------------------------------------------------------------ the fixture's SDK checks


@pytest.fixture(scope="module")
def deferred(w3: Web3, accounts: Accounts, paid: AttestedStack, attester: Attester) -> tuple[Any, Any]:
    """A prompter paying through a verifier that does not answer by itself."""
    d = accounts.deployer
    verifier_addr = chain.deploy(w3, d, "DeferredVerifier", paid.coordinator.address, True, VERIFIER_FEE)
    prompter_addr = chain.deploy(
        w3, d, "AttestedLLMPrompter", paid.registry.address, chain.CONTAINER_ID, MODEL, [attester.address]
    )
    prompter = chain.contract(w3, "AttestedLLMPrompter", prompter_addr)
    wallet = new_wallet(w3, paid.factory, d, prompter_addr)
    chain.transact(
        w3, d, prompter.functions.setVerification(verifier_addr, chain.ZERO_ADDRESS, PAYMENT, wallet), "set"
    )
    return chain.contract(w3, "DeferredVerifier", verifier_addr), prompter


def test_finalize_checks_request_and_caller(
    paid: AttestedStack, accounts: Accounts, attester: Attester, deferred: tuple[Any, Any]
) -> None:
    verifier, prompter = deferred
    fn = paid.coordinator.functions
    sub_id = paid.prompt(accounts.stranger, "Deferred?", prompter)
    result = signed_result(attester, "Deferred?", "Later.")
    receipt = paid.deliver(accounts.node, sub_id, delivery_from_result(result))  # type: ignore[arg-type]
    assert chain.events(verifier.events.VerificationRequested, receipt)[0]["subscriptionId"] == sub_id
    assert verifier.functions.lastProof().call() == bytes.fromhex(result["proof"])
    assert stored(paid, sub_id, prompter) == ["Later."]  # delivery does not wait for the verdict
    with pytest.raises(chain.ChainError, match=r"UnauthorizedVerifier\(\)"):
        chain.transact(
            paid.w3,
            accounts.stranger,
            fn.finalizeProofVerification(sub_id, 1, accounts.node.address, False),
            "f",
        )
    with pytest.raises(chain.ChainError, match=r"ProofRequestNotFound\(\)"):
        chain.transact(
            paid.w3,
            accounts.stranger,
            fn.finalizeProofVerification(sub_id, 1, accounts.node2.address, True),
            "f",
        )
    node_before = paid.balance(paid.node_wallet)
    chain.transact(
        paid.w3, accounts.stranger, verifier.functions.finalize(sub_id, 1, accounts.node.address, True), "f"
    )
    assert (
        paid.balance(paid.node_wallet) - node_before
        == PAYMENT - PAYMENT * 2 * PROTOCOL_FEE_BPS // 10_000 - VERIFIER_FEE
    )
    with pytest.raises(chain.ChainError, match=r"ProofRequestNotFound\(\)"):
        chain.transact(
            paid.w3,
            accounts.stranger,
            verifier.functions.finalize(sub_id, 1, accounts.node.address, True),
            "f",
        )


def test_after_a_week_anyone_finalizes_in_the_nodes_favour(
    paid: AttestedStack, accounts: Accounts, attester: Attester, deferred: tuple[Any, Any]
) -> None:
    _, prompter = deferred
    sub_id = paid.prompt(accounts.stranger, "Forgotten?", prompter)
    paid.deliver(accounts.node, sub_id, delivery_from_result(signed_result(attester, "Forgotten?", "Yes.")))  # type: ignore[arg-type]
    paid.w3.provider.make_request("evm_increaseTime", [7 * 24 * 3600 + 1])  # type: ignore[arg-type]
    paid.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    node_before = paid.balance(paid.node_wallet)
    call = paid.coordinator.functions.finalizeProofVerification(sub_id, 1, accounts.node.address, False)
    chain.transact(paid.w3, accounts.stranger, call, "finalize")
    assert paid.balance(paid.node_wallet) > node_before  # valid=false from a stranger is ignored: paid


def test_unsupported_token_and_invalid_wallet_revert(
    w3: Web3, paid: AttestedStack, accounts: Accounts, attester: Attester
) -> None:
    d = accounts.deployer
    no_eth = chain.deploy(w3, d, "DeferredVerifier", paid.coordinator.address, False, 0)
    prompter_addr = chain.deploy(
        w3, d, "AttestedLLMPrompter", paid.registry.address, chain.CONTAINER_ID, MODEL, [attester.address]
    )
    prompter = chain.contract(w3, "AttestedLLMPrompter", prompter_addr)
    wallet = new_wallet(w3, paid.factory, d, prompter_addr)
    chain.transact(
        w3, d, prompter.functions.setVerification(no_eth, chain.ZERO_ADDRESS, PAYMENT, wallet), "set"
    )
    sub_id = paid.prompt(accounts.stranger, "Token?", prompter)
    delivery = delivery_from_result(signed_result(attester, "Token?", "No."))
    with pytest.raises(chain.ChainError, match=r"UnsupportedVerifierToken\(\)"):
        paid.deliver(accounts.node, sub_id, delivery)  # type: ignore[arg-type]
    sub_id = paid.prompt(accounts.stranger, "Wallet?")
    inp, out, proof = delivery_from_result(signed_result(attester, "Wallet?", "No."))  # type: ignore[misc]
    call = paid.coordinator.functions.deliverCompute(sub_id, 1, inp, out, proof, accounts.node.address)
    with pytest.raises(chain.ChainError, match=r"InvalidWallet\(\)"):
        chain.transact(w3, accounts.node, call, "deliverCompute")
