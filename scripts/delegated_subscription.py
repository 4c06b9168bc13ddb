"""Sign an EIP-712 DelegateSubscription and post it, with the prompt, to an Infernet node.

Usage:
    python scripts/delegated_subscription.py --consumer 0x... --prompt "Is the sky blue?" \\
        [--registry 0x... | --coordinator 0x...] [--node-url http://127.0.0.1:4000] \\
        [--containers tgi_client_inference_service] [--frequency 1 --period 0 --redundancy 1] \\
        [--expiry-seconds 600] [--nonce N] [--dry-run]

The key (--private-key / PRIVATE_KEY) must be the consumer's delegated signer (`getSigner()`); the
subscription is owned by the consumer, which receives the answer in `_receiveCompute`. The node
answers `{}`: results exist only on-chain. Domain, types and container-id hashing follow
docs/protocol.md §2.4; `typed_data` is the exact structure that gets signed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from dataclasses import dataclass
from typing import Any

import httpx
from eth_abi.abi import encode
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak

import chain

SUBSCRIPTION_FIELDS = [
    {"name": "owner", "type": "address"},
    {"name": "activeAt", "type": "uint32"},
    {"name": "period", "type": "uint32"},
    {"name": "frequency", "type": "uint32"},
    {"name": "redundancy", "type": "uint16"},
    {"name": "containerId", "type": "bytes32"},
    {"name": "lazy", "type": "bool"},
    {"name": "verifier", "type": "address"},
    {"name": "paymentAmount", "type": "uint256"},
    {"name": "paymentToken", "type": "address"},
    {"name": "wallet", "type": "address"},
]


@dataclass(frozen=True)
class DelegatedSubscription:
    """The subscription a delegated signer authorises (SDK v1.1 field order)."""

    owner: str
    active_at: int
    period: int
    frequency: int
    redundancy: int
    containers: tuple[str, ...]
    lazy: bool = False
    verifier: str = chain.ZERO_ADDRESS
    payment_amount: int = 0
    payment_token: str = chain.ZERO_ADDRESS
    wallet: str = chain.ZERO_ADDRESS

    def as_tuple(self) -> tuple[Any, ...]:
        """The struct as the ABI tuple `Subscription` (for contract calls)."""
        return (
            self.owner, self.active_at, self.period, self.frequency, self.redundancy,
            container_id_hash(self.containers), self.lazy, self.verifier,
            self.payment_amount, self.payment_token, self.wallet,
        )


@dataclass(frozen=True)
class Signature:
    """An EIP-712 signature with the digest it signs."""

    v: int
    r: int
    s: int
    digest: bytes


def container_id_hash(containers: tuple[str, ...] | list[str]) -> bytes:
    """keccak256(abi.encode(string "a,b")): the Coordinator's containerId (standard, not packed)."""
    return keccak(encode(["string"], [chain.join_containers(containers)]))


def typed_data(
    sub: DelegatedSubscription, nonce: int, expiry: int, chain_id: int, coordinator: str
) -> dict[str, Any]:
    """The full EIP-712 message: domain InfernetCoordinator v1, primary type DelegateSubscription."""
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "DelegateSubscription": [
                {"name": "nonce", "type": "uint32"},
                {"name": "expiry", "type": "uint32"},
                {"name": "sub", "type": "Subscription"},
            ],
            "Subscription": SUBSCRIPTION_FIELDS,
        },
        "primaryType": "DelegateSubscription",
        "domain": {
            "name": "InfernetCoordinator",
            "version": "1",
            "chainId": chain_id,
            "verifyingContract": chain.checksum(coordinator, "coordinator"),
        },
        "message": {
            "nonce": nonce,
            "expiry": expiry,
            "sub": {
                "owner": sub.owner,
                "activeAt": sub.active_at,
                "period": sub.period,
                "frequency": sub.frequency,
                "redundancy": sub.redundancy,
                "containerId": container_id_hash(sub.containers),
                "lazy": sub.lazy,
                "verifier": sub.verifier,
                "paymentAmount": sub.payment_amount,
                "paymentToken": sub.payment_token,
                "wallet": sub.wallet,
            },
        },
    }


def sign(message: dict[str, Any], account: LocalAccount) -> Signature:
    """Sign typed data; v is 27/28 as ecrecover expects."""
    signable = encode_typed_data(full_message=message)
    digest = keccak(b"\x19" + signable.version + signable.header + signable.body)
    signed = account.sign_message(signable)
    return Signature(v=int(signed.v), r=int(signed.r), s=int(signed.s), digest=digest)


def rest_body(
    sub: DelegatedSubscription, sig: Signature, nonce: int, expiry: int, data: dict[str, Any]
) -> dict[str, Any]:
    """The node's delegated `POST /api/jobs` body: containers as the 0x hash, v/r/s as integers."""
    return {
        "subscription": {
            "owner": sub.owner,
            "active_at": sub.active_at,
            "period": sub.period,
            "frequency": sub.frequency,
            "redundancy": sub.redundancy,
            "containers": "0x" + container_id_hash(sub.containers).hex(),
            "lazy": sub.lazy,
            "verifier": sub.verifier,
            "payment_amount": sub.payment_amount,
            "payment_token": sub.payment_token,
            "wallet": sub.wallet,
        },
        "signature": {"nonce": nonce, "expiry": expiry, "v": sig.v, "r": sig.r, "s": sig.s},
        "data": data,
    }


def post(node_url: str, body: dict[str, Any], timeout: float = 10.0) -> str:
    """POST the delegated job; returns a one-line outcome or raises ChainError with the cause."""
    url = node_url.rstrip("/") + "/api/jobs"
    try:
        resp = httpx.post(url, json=body, timeout=timeout)
    except httpx.HTTPError as exc:
        raise chain.ChainError(f"cannot reach the node at {url}: {type(exc).__name__}: {exc}") from exc
    text = resp.text
    if resp.status_code == 200:
        return "accepted by the node; the answer arrives on-chain (AnswerReceived on the consumer)"
    if "MessageType is not JSON serializable" in text:
        raise chain.ChainError(
            f"node at {url} has its chain disabled (it answers 500 'Object of type MessageType is "
            "not JSON serializable'); set chain.enabled in its config.json"
        )
    raise chain.ChainError(f"node at {url} refused the job: HTTP {resp.status_code} {text.strip()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    chain.add_chain_arguments(parser)
    parser.add_argument("--coordinator", help="EIP712Coordinator address (else read from --registry)")
    parser.add_argument("--node-url", default=os.environ.get("NODE_URL", "http://127.0.0.1:4000"))
    parser.add_argument("--consumer", required=True, help="subscription owner (a Delegator contract)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--containers", default=chain.CONTAINER_ID, help="comma-joined container ids")
    parser.add_argument("--frequency", type=int, default=1)
    parser.add_argument("--period", type=int, default=0)
    parser.add_argument("--redundancy", type=int, default=1)
    parser.add_argument("--expiry-seconds", type=int, default=600)
    parser.add_argument("--nonce", type=int, help="default: the coordinator's maxSubscriberNonce + 1")
    parser.add_argument("--dry-run", action="store_true", help="print the signed body, do not post")
    args = parser.parse_args(argv)
    try:
        account = chain.load_account(args.private_key)
        w3 = chain.connect(args.rpc_url)
        if args.coordinator:
            coordinator = chain.require_code(w3, args.coordinator, "coordinator")
        else:
            coordinator = chain.resolve_coordinator(w3, args.registry)
        owner = chain.require_code(w3, args.consumer, "consumer")
        signer = _delegated_signer(w3, owner)
        if signer != account.address:
            raise chain.ChainError(
                f"the key's address {account.address} is not the consumer's delegated signer "
                f"{signer}; the coordinator would revert SignerMismatch()"
            )
        if not args.prompt:
            raise chain.ChainError("--prompt must not be empty")
        now = int(w3.eth.get_block("latest")["timestamp"])
        coord = chain.contract(w3, "TestCoordinator", coordinator)
        nonce = args.nonce if args.nonce is not None else _next_nonce(coord, owner)
        sub = DelegatedSubscription(
            owner=owner, active_at=now, period=args.period, frequency=args.frequency,
            redundancy=args.redundancy, containers=tuple(args.containers.split(",")),
        )
        expiry = now + args.expiry_seconds
        sig = sign(typed_data(sub, nonce, expiry, w3.eth.chain_id, coordinator), account)
        body = rest_body(sub, sig, nonce, expiry, {"text": args.prompt})
        if args.dry_run:
            print(json.dumps(body, indent=2))
            print(f"EIP-712 digest 0x{sig.digest.hex()}", file=sys.stderr)
            return 0
        outcome = post(args.node_url, body)
    except chain.ChainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"delegated subscription signed by {account.address} for consumer {owner}")
    print(f"  nonce {nonce}, expiry {expiry}, coordinator {coordinator}, chain {w3.eth.chain_id}")
    print(f"  digest 0x{sig.digest.hex()}")
    print(f"  {outcome}")
    return 0


def _delegated_signer(w3: Any, owner: str) -> str:
    try:
        return str(chain.contract(w3, "LLMPrompter", owner).functions.getSigner().call())
    except Exception as exc:  # any failure means the owner cannot be a Delegator
        raise chain.ChainError(
            f"consumer {owner} has no getSigner(): it is not a Delegator and cannot own "
            "delegated subscriptions"
        ) from exc


def _next_nonce(coord: Any, owner: str) -> int:
    try:
        return int(coord.functions.maxSubscriberNonce(owner).call()) + 1
    except Exception:  # not an EIP712Coordinator we can read: fall back to a random nonce
        return random.randint(1, 2**32 - 1)


if __name__ == "__main__":
    sys.exit(main())
