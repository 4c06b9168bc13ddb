"""Shared plumbing for the on-chain scripts: artifacts, RPC connection, keys, addresses, transactions.

Use it from scripts/deploy_consumer.py, request_onchain.py and delegated_subscription.py, and from the
contract tests. Every failure a user can cause (a wrong RPC URL, key or address, a revert) becomes a
`ChainError` whose message says what was wrong and what to check; the scripts print it and exit 2.
Private keys are never echoed back.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

from eth_abi.abi import decode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from web3 import Web3
from web3.exceptions import ContractCustomError, ContractLogicError, Web3Exception
from web3.logs import DISCARD

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "contracts" / "out"
COMPILER = ROOT / "scripts" / "compile_contracts.js"
CONTAINER_ID = "tgi_client_inference_service"
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
# Contracts whose custom errors are decoded when a transaction reverts.
_ERROR_SOURCES = (
    "LLMPrompter", "RecurringPrompter", "TestCoordinator", "AttestedLLMPrompter", "LLMAttestationVerifier",
    "TestWallet",
)
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_KEY = re.compile(r"(0x)?[0-9a-fA-F]{64}")


class ChainError(Exception):
    """Raised when a user-supplied RPC URL, key or address is wrong, or a transaction fails."""


def compile_contracts(force: bool = False) -> None:
    """Compile contracts/ into contracts/out/ with the pinned solcjs (a no-op when up to date)."""
    cmd = ["node", str(COMPILER)] + (["--force"] if force else [])
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    except FileNotFoundError as exc:
        raise ChainError("node is not installed: it is needed to run the solc compiler") from exc
    if proc.returncode != 0:
        raise ChainError(f"compiling contracts failed:\n{proc.stderr.strip() or proc.stdout.strip()}")
    load_artifact.cache_clear()


@cache
def load_artifact(name: str) -> dict[str, Any]:
    """The compiled artifact {abi, bytecode, ...} of contract `name`, compiling first if needed."""
    path = ARTIFACTS / f"{name}.json"
    if not path.exists():
        compile_contracts()
    if not path.exists():
        raise ChainError(f"no artifact for contract {name!r} in {ARTIFACTS}")
    artifact: dict[str, Any] = json.loads(path.read_text())
    return artifact


def connect(rpc_url: str, timeout: float = 10.0) -> Web3:
    """A connected Web3 for `rpc_url`, or a ChainError naming the URL and the reason."""
    parsed = urlparse(rpc_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ChainError(f"RPC URL must look like http://host:port, got {rpc_url!r}")
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))
    try:
        w3.eth.chain_id  # noqa: B018 - the first real request is the connectivity check
    except (OSError, Web3Exception, ValueError) as exc:
        raise ChainError(
            f"cannot reach an Ethereum JSON-RPC endpoint at {rpc_url}: {type(exc).__name__}: {exc}"
        ) from exc
    return w3


def load_account(private_key: str | None) -> LocalAccount:
    """The account of a hex private key; the error message never contains the key."""
    if not private_key:
        raise ChainError("no private key: pass --private-key or set PRIVATE_KEY")
    key = private_key.strip()
    if not _KEY.fullmatch(key):
        raise ChainError(
            "private key must be 32 bytes written as 64 hex digits (0x prefix optional); "
            f"got {len(key)} characters"
        )
    try:
        account: LocalAccount = Account.from_key(key)
    except (ValueError, Web3Exception) as exc:
        raise ChainError(f"private key is not a valid secp256k1 key: {type(exc).__name__}") from exc
    return account


def checksum(address: str | None, what: str) -> str:
    """`address` checksummed, or a ChainError saying which argument (`what`) is malformed."""
    if not address:
        raise ChainError(f"no {what} address given")
    if not _ADDRESS.fullmatch(address.strip()):
        raise ChainError(f"{what} address must be 0x followed by 40 hex digits, got {address!r}")
    return str(to_checksum_address(address.strip()))


def require_code(w3: Web3, address: str, what: str) -> str:
    """Checksummed `address` after checking a contract is deployed there."""
    addr = checksum(address, what)
    if len(w3.eth.get_code(cast(ChecksumAddress, addr))) == 0:
        raise ChainError(
            f"no contract at {what} address {addr} on chain {w3.eth.chain_id}: "
            "wrong address, or the RPC URL points at another network"
        )
    return addr


def resolve_coordinator(w3: Web3, registry: str) -> str:
    """The Coordinator address an Infernet Registry points to."""
    reg_addr = require_code(w3, registry, "registry")
    reg = contract(w3, "IRegistry", reg_addr)
    try:
        coordinator = str(reg.functions.COORDINATOR().call())
    except (ContractLogicError, Web3Exception, ValueError) as exc:
        raise ChainError(
            f"{reg_addr} does not answer COORDINATOR(): it is not an Infernet Registry ({exc})"
        ) from exc
    return require_code(w3, coordinator, "coordinator (from the registry)")


def contract(w3: Web3, name: str, address: str) -> Any:
    """A web3 contract object for artifact `name` at `address`."""
    return w3.eth.contract(address=cast(ChecksumAddress, address), abi=load_artifact(name)["abi"])


def has_function(w3: Web3, address: str, signature: str) -> bool:
    """Whether the code at `address` dispatches `signature`, e.g. "promptLLM(string)"."""
    return keccak(text=signature)[:4] in bytes(w3.eth.get_code(cast(ChecksumAddress, address)))


@cache
def _error_table() -> dict[bytes, tuple[str, list[str]]]:
    table: dict[bytes, tuple[str, list[str]]] = {}
    for name in _ERROR_SOURCES:
        for item in load_artifact(name)["abi"]:
            if item["type"] == "error":
                types = [inp["type"] for inp in item["inputs"]]
                sig = f"{item['name']}({','.join(types)})"
                table[keccak(text=sig)[:4]] = (item["name"], types)
    return table


def describe_revert(data: object) -> str:
    """A custom error's name and arguments from raw revert data, e.g. 'NotCoordinator()'."""
    if not isinstance(data, str | bytes):
        data = None
    raw = bytes.fromhex(data[2:] if data.startswith("0x") else data) if isinstance(data, str) else data
    if not raw:
        return "reverted without a reason (no such function, or a failed decode)"
    entry = _error_table().get(raw[:4])
    if entry is None:
        return f"reverted with unknown error data 0x{raw.hex()}"
    name, types = entry
    args = decode(types, raw[4:]) if types else ()
    return f"{name}({', '.join(str(a) for a in args)})"


def transact(w3: Web3, account: LocalAccount, call: Any, what: str, gas: int | None = None) -> Any:
    """Sign and send a contract call from `account`; returns the receipt or raises ChainError."""
    params: dict[str, Any] = {
        "from": account.address,
        "nonce": w3.eth.get_transaction_count(account.address, "pending"),
        "chainId": w3.eth.chain_id,
    }
    if gas is not None:
        params["gas"] = gas
    try:
        tx = call.build_transaction(params)
        signed = account.sign_transaction(tx)
        tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120)
    except ContractCustomError as exc:
        raise ChainError(f"{what} reverted: {describe_revert(exc.data)}") from exc
    except ContractLogicError as exc:
        raise ChainError(f"{what} reverted: {exc.message or describe_revert(exc.data)}") from exc
    except (Web3Exception, ValueError) as exc:
        message = str(exc)
        if "insufficient funds" in message.lower():
            message = f"account {account.address} cannot pay for gas on this chain ({message})"
        raise ChainError(f"{what} failed: {message}") from exc
    if receipt["status"] != 1:
        raise ChainError(f"{what} reverted in block {receipt['blockNumber']} (tx {tx_hash.hex()})")
    return receipt


def deploy(w3: Web3, account: LocalAccount, name: str, *args: Any) -> str:
    """Deploy artifact `name` with constructor `args`; returns its address."""
    art = load_artifact(name)
    factory = w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
    receipt = transact(w3, account, factory.constructor(*args), f"deploying {name}")
    return str(receipt["contractAddress"])


def add_chain_arguments(parser: argparse.ArgumentParser, registry: bool = True) -> None:
    """--rpc-url / --private-key (/ --registry) with their environment-variable defaults."""
    parser.add_argument(
        "--rpc-url",
        default=os.environ.get("RPC_URL", "http://127.0.0.1:8545"),
        help="JSON-RPC endpoint (env RPC_URL; default %(default)s)",
    )
    parser.add_argument(
        "--private-key",
        default=os.environ.get("PRIVATE_KEY"),
        help="hex private key of the sending account (env PRIVATE_KEY)",
    )
    if registry:
        parser.add_argument(
            "--registry",
            default=os.environ.get("REGISTRY_ADDRESS"),
            help="Infernet Registry address (env REGISTRY_ADDRESS)",
        )


def decode_text_output(output: bytes) -> str:
    """The text in a delivered `output`: abi (bytes raw, bytes processed), then raw as (string)."""
    raw, _processed = decode(["bytes", "bytes"], output)
    (text,) = decode(["string"], raw)
    return str(text)


def join_containers(containers: Iterable[str]) -> str:
    """The comma-joined container id string the Coordinator hashes."""
    ids = [c.strip() for c in containers]
    if not ids or any(not c or "," in c for c in ids):
        raise ChainError(f"container ids must be non-empty and contain no commas: {ids!r}")
    return ",".join(ids)


def events(event: Any, receipt: Any) -> list[dict[str, Any]]:
    """Args of every `event` (e.g. `c.events.AnswerReceived`) in `receipt`, ignoring other logs."""
    return [dict(log["args"]) for log in event().process_receipt(receipt, errors=DISCARD)]
