"""Signed answers: the attestation format against eth-account, the settings, and the app's results."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from eth_abi import decode, encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak
from hypothesis import given, settings
from hypothesis import strategies as st
from quart.typing import TestClientProtocol as Client

from containerkit import env_for
from faketgi import FakeTGI, Ok
from infernet_tgi.attestation import Attester, attestation_digest
from infernet_tgi.config import Settings
from infernet_tgi.errors import ConfigError
from infernet_tgi.protocol import SignedOffchainResult
from infernet_tgi.resources import AttestedServiceResources

VECTOR = json.loads((Path(__file__).resolve().parents[1] / "attestation_vector.json").read_text())
KEY = VECTOR["private_key"]
RITUAL_WORDS = "Proofs are not supported for TGI Client Inference Service"
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def typed_data(chain_id: int, input_hash: bytes, output_hash: bytes, model_hash: bytes) -> dict[str, Any]:
    """The EIP-712 message as eth-account (an independent implementation) builds it."""
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
            ],
            "Attestation": [
                {"name": "inputHash", "type": "bytes32"},
                {"name": "outputHash", "type": "bytes32"},
                {"name": "modelHash", "type": "bytes32"},
            ],
        },
        "primaryType": "Attestation",
        "domain": {"name": "InfernetTGIAttestation", "version": "1", "chainId": chain_id},
        "message": {"inputHash": input_hash, "outputHash": output_hash, "modelHash": model_hash},
    }


def recover(proof_hex: str, chain_id: int) -> tuple[bytes, bytes, bytes, str]:
    """(inputHash, outputHash, modelHash, signer) of a proof, recovered with eth-account."""
    input_hash, output_hash, model_hash, signature = decode(
        ["bytes32", "bytes32", "bytes32", "bytes"], bytes.fromhex(proof_hex)
    )
    message = encode_typed_data(full_message=typed_data(chain_id, input_hash, output_hash, model_hash))
    return input_hash, output_hash, model_hash, Account.recover_message(message, signature=signature)


# ------------------------------------------------------------------ the format, against eth-account


def test_golden_vector_matches_eth_account() -> None:
    attester = Attester(bytes.fromhex(KEY), VECTOR["chain_id"])
    assert attester.address == Account.from_key(KEY).address == VECTOR["attester"]
    raw_in, raw_out = bytes.fromhex(VECTOR["raw_input"]), bytes.fromhex(VECTOR["raw_output"])
    attestation = attester.attest(raw_in, raw_out, VECTOR["model_id"])
    assert attestation.proof().hex() == VECTOR["proof"]
    assert attestation.input_hash == keccak(raw_in) == bytes.fromhex(VECTOR["input_hash"])
    assert attestation.output_hash == keccak(raw_out) == bytes.fromhex(VECTOR["output_hash"])
    assert (
        attestation.model_hash == keccak(VECTOR["model_id"].encode()) == bytes.fromhex(VECTOR["model_hash"])
    )
    # eth-account signs the same typed data to the same bytes (RFC 6979 is deterministic)...
    message = encode_typed_data(
        full_message=typed_data(VECTOR["chain_id"], keccak(raw_in), keccak(raw_out), attestation.model_hash)
    )
    theirs = Account.sign_message(message, KEY)
    assert bytes(theirs.signature) == attestation.signature == bytes.fromhex(VECTOR["signature"])
    # ...and recovers the attester from the proof.
    assert recover(VECTOR["proof"], VECTOR["chain_id"])[3] == VECTOR["attester"]


def test_signature_is_low_s_with_v_27_or_28_and_bound_to_the_chain() -> None:
    attester = Attester(bytes.fromhex(KEY), 1)
    for i in range(20):
        sig = attester.attest(b"in%d" % i, b"out", "m").signature
        assert len(sig) == 65 and sig[64] in (27, 28)
        assert int.from_bytes(sig[32:64], "big") <= SECP256K1_N // 2
        assert attester.attest(b"in%d" % i, b"out", "m").proof() == encode(  # the written-out layout
            ["bytes32", "bytes32", "bytes32", "bytes"],
            [keccak(b"in%d" % i), keccak(b"out"), keccak(b"m"), sig],
        )
    one = attester.attest(b"q", b"a", "m").proof().hex()
    assert recover(one, 1)[3] == attester.address
    assert recover(one, 31337)[3] != attester.address  # another chain's verifier sees another signer
    assert attestation_digest(1, b"\0" * 32, b"\0" * 32, b"\0" * 32) != attestation_digest(
        2, b"\0" * 32, b"\0" * 32, b"\0" * 32
    )


@settings(max_examples=30, deadline=None)
@given(
    raw_input=st.binary(max_size=300),
    raw_output=st.binary(max_size=300),
    model=st.text(max_size=40),
    chain_id=st.integers(min_value=1, max_value=2**64),
)
def test_any_statement_recovers_with_eth_account(
    raw_input: bytes, raw_output: bytes, model: str, chain_id: int
) -> None:
    attester = Attester(bytes.fromhex(KEY), chain_id)
    proof = attester.attest(raw_input, raw_output, model).proof().hex()
    input_hash, output_hash, model_hash, signer = recover(proof, chain_id)
    assert (input_hash, output_hash) == (keccak(raw_input), keccak(raw_output))
    assert model_hash == keccak(model.encode()) and signer == VECTOR["attester"]


# ------------------------------------------------------------------ settings


@settings(max_examples=60, deadline=None)
@given(key=st.text(max_size=80), chain=st.text(max_size=12))
def test_any_value_is_a_config_error_or_an_attester_never_a_leak(key: str, chain: str) -> None:
    env = {"TGI_INF_ATTESTATION_KEY": key, "TGI_INF_ATTESTATION_CHAIN_ID": chain}
    try:
        settings_ = Settings.from_env(env)
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith("TGI_INF_ATTESTATION_")
        secret = key.strip().removeprefix("0x")
        if len(secret) >= 8 and not key.strip().startswith("@") and secret not in chain:
            assert secret not in message
    else:
        assert (settings_.attester is None) == (not key.strip())


def test_settings_read_key_and_chain(tmp_path: Path) -> None:
    plain = Settings.from_env({"TGI_INF_ATTESTATION_KEY": KEY, "TGI_INF_ATTESTATION_CHAIN_ID": "31337"})
    assert plain.attester is not None and plain.attester.address == VECTOR["attester"]
    assert plain.attester.chain_id == 31337
    key_file = tmp_path / "attester.key"
    key_file.write_text("0x" + KEY + "\n")
    from_file = Settings.from_env(
        {"TGI_INF_ATTESTATION_KEY": f"@{key_file}", "TGI_INF_ATTESTATION_CHAIN_ID": "1"}
    )
    assert from_file.attester is not None and from_file.attester.address == VECTOR["attester"]
    assert Settings.from_env({}).attester is None
    # The key never shows in a repr of the settings (which a log line might print).
    assert KEY.lower() not in repr(plain).lower() and VECTOR["attester"] in repr(plain)


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"TGI_INF_ATTESTATION_KEY": KEY}, "TGI_INF_ATTESTATION_CHAIN_ID is required"),
        ({"TGI_INF_ATTESTATION_CHAIN_ID": "1"}, "TGI_INF_ATTESTATION_KEY is not"),
        ({"TGI_INF_ATTESTATION_KEY": KEY, "TGI_INF_ATTESTATION_CHAIN_ID": "0x1"}, "decimal chain id"),
        ({"TGI_INF_ATTESTATION_KEY": KEY, "TGI_INF_ATTESTATION_CHAIN_ID": "0"}, "positive chain id"),
        ({"TGI_INF_ATTESTATION_KEY": KEY, "TGI_INF_ATTESTATION_CHAIN_ID": "-5"}, "decimal chain id"),
        ({"TGI_INF_ATTESTATION_KEY": KEY, "TGI_INF_ATTESTATION_CHAIN_ID": "1_0"}, "decimal chain id"),
        ({"TGI_INF_ATTESTATION_KEY": KEY, "TGI_INF_ATTESTATION_CHAIN_ID": "9" * 5000}, "decimal chain id"),
        ({"TGI_INF_ATTESTATION_KEY": KEY, "TGI_INF_ATTESTATION_CHAIN_ID": str(2**256)}, "below 2**256"),
        ({"TGI_INF_ATTESTATION_KEY": KEY[:-2], "TGI_INF_ATTESTATION_CHAIN_ID": "1"}, "64 hex digits"),
        ({"TGI_INF_ATTESTATION_KEY": KEY[:-1] + "g", "TGI_INF_ATTESTATION_CHAIN_ID": "1"}, "64 hex digits"),
        (
            {"TGI_INF_ATTESTATION_KEY": "00" * 32, "TGI_INF_ATTESTATION_CHAIN_ID": "1"},
            "not a valid secp256k1",
        ),
        (
            {"TGI_INF_ATTESTATION_KEY": f"{SECP256K1_N:064x}", "TGI_INF_ATTESTATION_CHAIN_ID": "1"},
            "not a valid secp256k1",
        ),
        (
            {"TGI_INF_ATTESTATION_KEY": "@/nonexistent/key", "TGI_INF_ATTESTATION_CHAIN_ID": "1"},
            "cannot read",
        ),
    ],
)
def test_malformed_values_name_the_variable_never_the_key(env: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    message = str(info.value)
    assert words in message and message.startswith("TGI_INF_ATTESTATION_")
    key = env.get("TGI_INF_ATTESTATION_KEY", "@")
    if not key.startswith("@"):
        assert key[:16] not in message  # not even a prefix of the (wrong) key


def test_key_file_that_is_not_a_key(tmp_path: Path) -> None:
    bad = tmp_path / "k"
    bad.write_bytes(b"\xff" + KEY.encode()[1:])
    with pytest.raises(ConfigError, match="not hex text") as info:
        Settings.from_env({"TGI_INF_ATTESTATION_KEY": f"@{bad}", "TGI_INF_ATTESTATION_CHAIN_ID": "1"})
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_cli_exits_2_naming_the_variable() -> None:
    env = {**os.environ, "TGI_INF_ATTESTATION_KEY": KEY[:-2] + "zz", "TGI_INF_ATTESTATION_CHAIN_ID": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "infernet_tgi"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "TGI_INF_ATTESTATION_KEY" in done.stderr and KEY[:16] not in done.stderr + done.stdout


# ------------------------------------------------------------------ the app


def attested_env(url: str, **extra: Any) -> dict[str, str]:
    return env_for(url, TGI_INF_ATTESTATION_KEY=KEY, TGI_INF_ATTESTATION_CHAIN_ID="31337", **extra)


async def post(client: Client, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = await client.post("/service_output", json=body)
    return response.status_code, json.loads(await response.get_data(as_text=True))


async def test_without_key_requires_proof_is_ritual_400(client: Client, fake: FakeTGI) -> None:
    for body in (
        {"source": 1, "destination": 1, "data": {"text": "x"}, "requires_proof": True},
        {"source": 0, "destination": 0, "data": encode(["string"], ["x"]).hex(), "requires_proof": True},
    ):
        status, answer = await post(client, body)
        assert status == 400 and answer["code"] == "400" and RITUAL_WORDS in answer["description"]
    assert fake.requests == []  # refused before any upstream call
    status, answer = await post(
        client, {"source": 0, "destination": 0, "data": encode(["string"], ["x"]).hex()}
    )
    assert status == 200 and answer["proof"] == ""


async def test_onchain_result_carries_a_proof(app_for: Any, fake: FakeTGI) -> None:
    client = await app_for(attested_env(fake.url))
    fake.script(Ok(text="Paris."))
    data = encode(["string"], ["Capital of France?"]).hex()
    status, answer = await post(client, {"source": 0, "destination": 0, "data": data, "requires_proof": True})
    assert status == 200 and answer["raw_input"] == data
    input_hash, output_hash, model_hash, signer = recover(answer["proof"], 31337)
    assert signer == VECTOR["attester"]
    assert input_hash == keccak(bytes.fromhex(data))
    assert (
        output_hash == keccak(bytes.fromhex(answer["raw_output"])) == keccak(encode(["string"], ["Paris."]))
    )
    assert model_hash == keccak(fake.model_id.encode())  # the engine's own model id (its /info)


async def test_every_onchain_and_delegated_result_is_signed(app_for: Any, fake: FakeTGI) -> None:
    client = await app_for(attested_env(fake.url, TGI_INF_MODEL="operator/declared-model"))
    fake.script(Ok(text="a1"), Ok(text="a2"))
    data = encode(["string", "string"], ["q", '{"max_new_tokens": 4}']).hex()
    _, onchain = await post(client, {"source": 0, "destination": 0, "data": data, "requires_proof": False})
    _, delegated = await post(client, {"source": 1, "destination": 0, "data": {"text": "Delegated?"}})
    for answer in (onchain, delegated):
        input_hash, output_hash, model_hash, signer = recover(answer["proof"], 31337)
        assert signer == VECTOR["attester"] and model_hash == keccak(b"operator/declared-model")
        assert input_hash == keccak(bytes.fromhex(answer["raw_input"]))
        assert output_hash == keccak(bytes.fromhex(answer["raw_output"]))
    assert delegated["raw_input"] == encode(["string"], ["Delegated?"]).hex()


async def test_offchain_proof_beside_output_only_when_asked(app_for: Any, fake: FakeTGI) -> None:
    client = await app_for(attested_env(fake.url))
    fake.script(Ok(text="yes"), Ok(text="no"))
    _, signed = await post(
        client, {"source": 1, "destination": 1, "data": {"text": "Q?"}, "requires_proof": True}
    )
    assert signed["output"] == "yes" and signed["attester"] == VECTOR["attester"]
    assert SignedOffchainResult.model_validate(signed).model_dump() == signed  # the documented shape
    input_hash, output_hash, _, signer = recover(signed["proof"], 31337)
    # Off-chain, raw_input / raw_output are the ABI encodings the on-chain path uses.
    assert signer == VECTOR["attester"]
    assert input_hash == keccak(encode(["string"], ["Q?"]))
    assert output_hash == keccak(encode(["string"], ["yes"]))
    _, plain = await post(
        client, {"source": 1, "destination": 1, "data": {"text": "Q?"}, "requires_proof": False}
    )
    assert plain["output"] == "no" and "proof" not in plain and "attester" not in plain
    status, stream = await post(
        client, {"source": 1, "destination": 2, "data": {"text": "Q?"}, "requires_proof": True}
    )
    assert status == 400 and RITUAL_WORDS in stream["description"] and "stream" in stream["description"]


async def test_chat_question_is_signed_as_its_json(app_for: Any, fake: FakeTGI) -> None:
    client = await app_for(attested_env(fake.url, TGI_INF_CHAT_TEMPLATE="chatml"))  # chat via /generate
    fake.script(Ok(text="hi"))
    messages = [{"role": "user", "content": "Say hi ✓"}]
    body = {"source": 1, "destination": 1, "data": {"messages": messages}, "requires_proof": True}
    _, answer = await post(client, body)
    input_hash = recover(answer["proof"], 31337)[0]
    assert input_hash == keccak(encode(["string"], [json.dumps(messages, ensure_ascii=False)]))


async def test_attester_published_and_key_never_exposed(
    app_for: Any, fake: FakeTGI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = await app_for(attested_env(fake.url))
    fake.script(Ok(text="x"))
    await post(client, {"source": 0, "destination": 0, "data": encode(["string"], ["q"]).hex()})
    resources = json.loads(await (await client.get("/service-resources")).get_data(as_text=True))
    assert AttestedServiceResources.model_validate(resources).attestation.attester == VECTOR["attester"]
    assert resources["attestation"]["chain_id"] == 31337
    assert resources["attestation"]["eip712_domain"] == {
        "name": "InfernetTGIAttestation",
        "version": "1",
        "chainId": 31337,
    }
    metrics = await (await client.get("/metrics")).get_data(as_text=True)
    assert f"signing answers as Attester(address={VECTOR['attester']}, chain_id=31337)" in caplog.text
    everything = json.dumps(resources) + metrics + caplog.text
    assert KEY not in everything.lower()


async def test_engine_without_model_id_fails_the_job_clearly(app_for: Any, fake: FakeTGI) -> None:
    fake.model_id = ""
    try:
        client = await app_for(attested_env(fake.url))
        fake.script(Ok(text="x"))
        status, answer = await post(
            client, {"source": 0, "destination": 0, "data": encode(["string"], ["q"]).hex()}
        )
    finally:
        fake.model_id = FakeTGI.model_id
    assert status == 503 and "TGI_INF_MODEL" in answer["description"]


async def test_fixed_job_through_the_app_gives_the_golden_proof(app_for: Any, fake: FakeTGI) -> None:
    """The golden vector end to end: the vector's key, its question as on-chain input, the engine
    answering its text, the model named by TGI_INF_MODEL: the container returns exactly its proof."""
    env = env_for(
        fake.url,
        TGI_INF_ATTESTATION_KEY=KEY,
        TGI_INF_ATTESTATION_CHAIN_ID=str(VECTOR["chain_id"]),
        TGI_INF_MODEL=VECTOR["model_id"],
    )
    client = await app_for(env)
    (answer,) = decode(["string"], bytes.fromhex(VECTOR["raw_output"]))
    fake.script(Ok(text=answer))
    body = {"source": 0, "destination": 0, "data": VECTOR["raw_input"], "requires_proof": True}
    status, result = await post(client, body)
    assert status == 200
    assert (result["raw_input"], result["raw_output"]) == (VECTOR["raw_input"], VECTOR["raw_output"])
    assert result["proof"] == VECTOR["proof"]
