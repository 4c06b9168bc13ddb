"""EIP-712 delegated subscriptions: the digest eth-account signs is the one Solidity recovers from.

The coordinator fixture computes the digest with abi.encode/keccak256 exactly as infernet-sdk's
EIP712Coordinator does (domain "InfernetCoordinator" v1, chain id, verifying contract) and checks
`ecrecover` against the consumer's `getSigner()`.
"""

from __future__ import annotations

import pytest
from chainkit import Accounts, Stack
from eth_abi import encode
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from node_codec import container_result, delivery_from_result

import chain
import delegated_subscription as ds


def _sub(stack: Stack, **overrides: object) -> ds.DelegatedSubscription:
    now = int(stack.w3.eth.get_block("latest")["timestamp"])
    fields: dict[str, object] = {
        "owner": stack.prompter.address, "active_at": now, "period": 0, "frequency": 1,
        "redundancy": 1, "containers": (chain.CONTAINER_ID,),
    }
    fields.update(overrides)
    return ds.DelegatedSubscription(**fields)  # type: ignore[arg-type]


def _signed(
    stack: Stack, signer: LocalAccount, sub: ds.DelegatedSubscription, nonce: int, expiry: int
) -> ds.Signature:
    message = ds.typed_data(sub, nonce, expiry, stack.w3.eth.chain_id, stack.coordinator.address)
    return ds.sign(message, signer)


def test_container_id_hash_is_standard_abi_encoding() -> None:
    assert ds.container_id_hash(["a", "b"]) == keccak(encode(["string"], ["a,b"]))
    assert ds.container_id_hash(["a", "b"]) != keccak(b"a,b")  # not packed
    with pytest.raises(chain.ChainError):
        ds.container_id_hash(["a,b"])


def test_digest_matches_solidity_and_ecrecover(stack: Stack, accounts: Accounts) -> None:
    sub = _sub(stack, period=30, frequency=3, redundancy=2, containers=("a", "b"),
               payment_amount=7, lazy=True)
    expiry = sub.active_at + 600
    sig = _signed(stack, accounts.signer, sub, 5, expiry)
    fn = stack.coordinator.functions
    assert fn.delegateSubscriptionDigest(5, expiry, sub.as_tuple()).call() == sig.digest
    recovered = fn.recoverDelegatee(
        5, expiry, sub.as_tuple(), sig.v, sig.r.to_bytes(32, "big"), sig.s.to_bytes(32, "big")
    ).call()
    assert recovered == accounts.signer.address
    domain = fn.eip712Domain().call()
    assert domain[1:5] == ["InfernetCoordinator", "1", 31337, stack.coordinator.address]


def test_delegated_create_and_deliver(stack: Stack, accounts: Accounts) -> None:
    sub = _sub(stack)
    nonce = stack.coordinator.functions.maxSubscriberNonce(stack.prompter.address).call() + 1
    expiry = sub.active_at + 600
    sig = _signed(stack, accounts.signer, sub, nonce, expiry)
    r, s = sig.r.to_bytes(32, "big"), sig.s.to_bytes(32, "big")
    inp, out, proof = delivery_from_result(container_result("delegated hello"))  # type: ignore[misc]
    call = stack.coordinator.functions.deliverComputeDelegatee(
        nonce, expiry, sub.as_tuple(), sig.v, r, s, 1, inp, out, proof, accounts.node.address
    )
    receipt = chain.transact(stack.w3, accounts.node, call, "deliverComputeDelegatee")
    (ev,) = chain.events(stack.prompter.events.AnswerReceived, receipt)
    assert ev["answer"] == "delegated hello"
    key = keccak(encode(["address", "uint32"], [stack.prompter.address, nonce]))
    sub_id = stack.coordinator.functions.delegateCreatedIds(key).call()
    assert sub_id == ev["subscriptionId"]
    assert stack.coordinator.functions.getSubscription(sub_id).call()[0] == stack.prompter.address
    # Same (owner, nonce) again returns the existing subscription instead of creating one.
    again = stack.coordinator.functions.createSubscriptionDelegatee(
        nonce, expiry, sub.as_tuple(), sig.v, r, s
    )
    assert again.call() == sub_id


def test_wrong_signer_and_expired_signature(stack: Stack, accounts: Accounts) -> None:
    sub = _sub(stack)
    expiry = sub.active_at + 600
    bad = _signed(stack, accounts.stranger, sub, 90_001, expiry)
    call = stack.coordinator.functions.createSubscriptionDelegatee(
        90_001, expiry, sub.as_tuple(), bad.v, bad.r.to_bytes(32, "big"), bad.s.to_bytes(32, "big")
    )
    with pytest.raises(chain.ChainError, match=r"SignerMismatch\(\)"):
        chain.transact(stack.w3, accounts.node, call, "createSubscriptionDelegatee")
    old = _signed(stack, accounts.signer, sub, 90_002, sub.active_at - 1)
    call = stack.coordinator.functions.createSubscriptionDelegatee(
        90_002, sub.active_at - 1, sub.as_tuple(), old.v, old.r.to_bytes(32, "big"),
        old.s.to_bytes(32, "big"),
    )
    with pytest.raises(chain.ChainError, match=r"SignatureExpired\(\)"):
        chain.transact(stack.w3, accounts.node, call, "createSubscriptionDelegatee")


def test_rest_body_shape(stack: Stack, accounts: Accounts) -> None:
    sub = _sub(stack)
    sig = _signed(stack, accounts.signer, sub, 1, sub.active_at + 60)
    body = ds.rest_body(sub, sig, 1, sub.active_at + 60, {"text": "hi"})
    assert set(body) == {"subscription", "signature", "data"}
    assert body["subscription"]["containers"] == "0x" + ds.container_id_hash((chain.CONTAINER_ID,)).hex()
    assert set(body["subscription"]) == {
        "owner", "active_at", "period", "frequency", "redundancy", "containers", "lazy",
        "verifier", "payment_amount", "payment_token", "wallet",
    }
    assert all(isinstance(body["signature"][k], int) for k in ("nonce", "expiry", "v", "r", "s"))
    assert body["signature"]["v"] in (27, 28)
