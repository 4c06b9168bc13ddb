"""Deploy an LLM consumer contract next to an Infernet Registry.

Usage:
    python scripts/deploy_consumer.py --registry 0x663F3ad617193148711d28f5334eE4Ed07016602 \\
        [--kind callback|recurring] [--container-id tgi_client_inference_service] [--signer 0x...]

--rpc-url, --private-key and --registry default to RPC_URL, PRIVATE_KEY and REGISTRY_ADDRESS. The
callback kind deploys LLMPrompter (one-off prompts, delegated-subscription signer = --signer or the
deployer); the recurring kind deploys RecurringPrompter. Prints the address and the next command.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from eth_abi.abi import encode
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak
from web3 import Web3

import chain

KINDS = {"callback": "LLMPrompter", "recurring": "RecurringPrompter"}


@dataclass(frozen=True)
class Deployment:
    """What a deployment produced: enough to print and to use the contract."""

    contract_name: str
    address: str
    coordinator: str
    container_id: str
    signer: str | None


def deploy_consumer(
    w3: Web3,
    account: LocalAccount,
    registry: str,
    kind: str = "callback",
    container_id: str = chain.CONTAINER_ID,
    signer: str | None = None,
) -> Deployment:
    """Deploy the consumer of `kind` against `registry` after checking the registry is real."""
    if kind not in KINDS:
        raise chain.ChainError(f"--kind must be one of {sorted(KINDS)}, got {kind!r}")
    container_id = chain.join_containers(container_id.split(","))
    coordinator = chain.resolve_coordinator(w3, registry)
    registry = chain.checksum(registry, "registry")
    name = KINDS[kind]
    if kind == "callback":
        delegate = chain.checksum(signer, "signer") if signer else account.address
        address = chain.deploy(w3, account, name, registry, container_id, delegate)
        return Deployment(name, address, coordinator, container_id, delegate)
    address = chain.deploy(w3, account, name, registry, container_id)
    return Deployment(name, address, coordinator, container_id, None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    chain.add_chain_arguments(parser)
    parser.add_argument("--kind", choices=sorted(KINDS), default="callback")
    parser.add_argument(
        "--container-id",
        default=chain.CONTAINER_ID,
        help="container id(s) as in the node's config.json, comma-joined for a chain",
    )
    parser.add_argument("--signer", help="delegated-subscription signer (callback kind; default deployer)")
    args = parser.parse_args(argv)
    try:
        account = chain.load_account(args.private_key)
        w3 = chain.connect(args.rpc_url)
        dep = deploy_consumer(w3, account, args.registry, args.kind, args.container_id, args.signer)
    except chain.ChainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    hashed = "0x" + keccak(encode(["string"], [dep.container_id])).hex()
    print(f"deployed {dep.contract_name} at {dep.address}")
    print(f"  chain id      {w3.eth.chain_id} via {args.rpc_url}")
    print(f"  deployer      {account.address}")
    print(f"  registry      {chain.checksum(args.registry, 'registry')}")
    print(f"  coordinator   {dep.coordinator}")
    print(f"  container id  {dep.container_id} (on-chain containerId {hashed})")
    if dep.signer:
        print(f"  delegated signer {dep.signer}")
        print(
            "next: python scripts/request_onchain.py "
            f"--consumer {dep.address} --prompt 'Is the sky blue during a clear day?'"
        )
    else:
        print(
            "next: python scripts/request_onchain.py "
            f"--consumer {dep.address} --prompt '...' --frequency 3 --period 60"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
