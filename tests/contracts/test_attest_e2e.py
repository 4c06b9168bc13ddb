"""End to end on anvil: the real container (with an attestation key) answers from localtgi, the node's
encoding and delivery are played as node 1.4.0 does them, and the contracts judge the real proof.

The attester address and the model id come from the container's /service-resources, as an operator
would read them to configure the verifier and the consumer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from attestkit import AttestedStack, deploy_attested, stored
from chainkit import Accounts, start_container, stop
from eth_abi import decode, encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak
from node_codec import delivery_from_result
from node_double import NodeDouble
from web3 import Web3

import chain

VECTOR = json.loads((Path(__file__).resolve().parents[1] / "attestation_vector.json").read_text())
# LLMAttestation.Status
VALID, INPUT_MISMATCH, OUTPUT_MISMATCH, MODEL_MISMATCH, WRONG_SIGNER = 0, 2, 3, 4, 7


@pytest.fixture(scope="module")
def attested_url(localtgi_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"TGI_INF_ATTESTATION_KEY": VECTOR["private_key"], "TGI_INF_ATTESTATION_CHAIN_ID": "31337"}
    proc, url = start_container(localtgi_url, tmp_path_factory.mktemp("attested") / "c.log", extra_env=env)
    try:
        yield url
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def published(attested_url: str) -> tuple[str, str]:
    """(attester address, model id) as the container publishes them."""
    resources = httpx.get(attested_url + "/service-resources", timeout=10).json()
    model = resources["compute_capability"][0]["models"][0]  # infernet-ml's BroadcastedArtifact
    return resources["attestation"]["attester"], model["manifest"]["model_id"]


@pytest.fixture(scope="module")
def paid(w3: Web3, accounts: Accounts, published: tuple[str, str]) -> AttestedStack:
    attester, model = published
    return deploy_attested(w3, accounts, [attester], model)


def run_container(
    stack: AttestedStack, url: str, sub_id: int, node: str, prompter: Any = None
) -> dict[str, Any]:
    """What the node does before delivery: read the inputs, call the container with requires_proof
    (the subscription names a verifier), keep its JSON."""
    target = prompter if prompter is not None else stack.prompter
    inputs = target.functions.getContainerInputs(sub_id, 1, 0, node).call()
    body = {"source": 0, "destination": 0, "data": inputs.hex(), "requires_proof": True}
    response = httpx.post(url + "/service_output", json=body, timeout=120)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_real_proof_is_verified_and_the_answer_stored(
    paid: AttestedStack, accounts: Accounts, attested_url: str, published: tuple[str, str]
) -> None:
    sub_id = paid.prompt(accounts.stranger, "Is the sky blue during a clear day?")
    result = run_container(paid, attested_url, sub_id, accounts.node.address)
    assert (
        result["proof"]
        and result["raw_input"] == encode(["string"], ["Is the sky blue during a clear day?"]).hex()
    )
    receipt = paid.deliver(accounts.node, sub_id, delivery_from_result(result))  # type: ignore[arg-type]
    (verdict,) = chain.events(paid.verifier.events.ProofVerified, receipt)
    assert (verdict["valid"], verdict["status"], verdict["signer"]) == (True, VALID, published[0])
    (answer,) = decode(["string"], bytes.fromhex(result["raw_output"]))
    assert stored(paid, sub_id) == [answer]
    assert chain.events(paid.prompter.events.AnswerReceived, receipt)[0]["answer"] == answer


@pytest.mark.parametrize("field", ["raw_output", "raw_input"])
def test_node_tampering_with_real_output_is_refused(
    paid: AttestedStack, accounts: Accounts, attested_url: str, field: str
) -> None:
    prompt = f"Name a color ({field})."
    sub_id = paid.prompt(accounts.stranger, prompt)
    result = run_container(paid, attested_url, sub_id, accounts.node.address)
    result[field] = encode(["string"], ["forged by the node"]).hex()
    receipt = paid.deliver(accounts.node, sub_id, delivery_from_result(result))  # type: ignore[arg-type]
    (rejected,) = chain.events(paid.prompter.events.AnswerRejected, receipt)
    assert rejected["status"] == (OUTPUT_MISMATCH if field == "raw_output" else INPUT_MISMATCH)
    assert stored(paid, sub_id) == []


@pytest.mark.parametrize("case", ["signer not allowed", "wrong model"])
def test_real_proof_against_other_expectations_is_refused(
    w3: Web3, accounts: Accounts, attested_url: str, published: tuple[str, str], case: str
) -> None:
    attester, model = published
    if case == "signer not allowed":
        stack, status = deploy_attested(w3, accounts, [accounts.signer.address], model), WRONG_SIGNER
    else:
        stack, status = deploy_attested(w3, accounts, [attester], "some/other-model"), MODEL_MISMATCH
    sub_id = stack.prompt(accounts.stranger, "Is water wet?")
    result = run_container(stack, attested_url, sub_id, accounts.node.address)
    before = stack.balance(stack.node_wallet)
    receipt = stack.deliver(accounts.node, sub_id, delivery_from_result(result))  # type: ignore[arg-type]
    (verdict,) = chain.events(stack.verifier.events.ProofVerified, receipt)
    assert (verdict["valid"], verdict["status"]) == (False, status)
    assert chain.events(stack.prompter.events.AnswerRejected, receipt)[0]["status"] == status
    assert stored(stack, sub_id) == [] and stack.balance(stack.node_wallet) < before  # slashed


def test_offchain_job_through_the_node_carries_a_checkable_proof(
    attested_url: str, published: tuple[str, str]
) -> None:
    """`POST /api/jobs` with requires_proof: the node stores the container's JSON, whose proof anyone
    recomputes from the question and answer text alone (abi.encode(string) of each)."""
    node = NodeDouble({chain.CONTAINER_ID: attested_url})
    node_url = node.start()
    try:
        job = {"containers": [chain.CONTAINER_ID], "data": {"text": "Is fire hot?"}, "requires_proof": True}
        job_id = httpx.post(node_url + "/api/jobs", json=job, timeout=10).json()["id"]
        deadline = time.monotonic() + 120
        while (found := httpx.get(node_url + "/api/jobs", params={"id": job_id}).json()[0])[
            "status"
        ] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        node.stop()
    output = found["result"]["output"]
    attester, model = published
    assert output["attester"] == attester
    input_hash, output_hash, model_hash, signature = decode(
        ["bytes32", "bytes32", "bytes32", "bytes"], bytes.fromhex(output["proof"])
    )
    assert input_hash == keccak(encode(["string"], ["Is fire hot?"]))
    assert output_hash == keccak(encode(["string"], [output["output"]]))
    assert model_hash == keccak(model.encode())
    typed = {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
            ],
            "Attestation": [{"name": n, "type": "bytes32"} for n in ("inputHash", "outputHash", "modelHash")],
        },
        "primaryType": "Attestation",
        "domain": {"name": "InfernetTGIAttestation", "version": "1", "chainId": 31337},
        "message": {"inputHash": input_hash, "outputHash": output_hash, "modelHash": model_hash},
    }
    assert Account.recover_message(encode_typed_data(full_message=typed), signature=signature) == attester
