"""The operator scripts against anvil: what they print, and their messages for wrong input.

Each script's `main(argv)` runs in-process (a subprocess per case would spend its time importing
web3); its exit status and output are what a user sees.
"""

from __future__ import annotations

import json
import re
import threading
import time

import pytest
from chainkit import Accounts, Stack, free_port
from node_codec import container_result

import chain
import delegated_subscription
import deploy_consumer
import request_onchain


def _key(account: object) -> str:
    return "0x" + account.key.hex()  # type: ignore[attr-defined]


def test_deploy_callback_consumer(
    stack: Stack, accounts: Accounts, anvil_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = deploy_consumer.main([
        "--rpc-url", anvil_url, "--private-key", _key(accounts.deployer),
        "--registry", stack.registry.address,
    ])
    out = capsys.readouterr().out
    assert rc == 0, out
    address = re.search(r"deployed LLMPrompter at (0x[0-9a-fA-F]{40})", out).group(1)  # type: ignore[union-attr]
    assert f"coordinator   {stack.coordinator.address}" in out
    assert "request_onchain.py --consumer " + address in out
    prompter = chain.contract(stack.w3, "LLMPrompter", address)
    assert prompter.functions.getSigner().call() == accounts.deployer.address
    assert prompter.functions.containerId().call() == "tgi_client_inference_service"


def test_deploy_recurring_consumer_from_env(
    stack: Stack, accounts: Accounts, anvil_url: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RPC_URL", anvil_url)
    monkeypatch.setenv("PRIVATE_KEY", _key(accounts.deployer))
    monkeypatch.setenv("REGISTRY_ADDRESS", stack.registry.address)
    assert deploy_consumer.main(["--kind", "recurring"]) == 0
    assert "deployed RecurringPrompter at 0x" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--private-key": "0x1234"}, "64 hex digits"),
        ({"--registry": "0x12"}, "0x followed by 40 hex digits"),
        ({"--registry": "0x" + "ab" * 20}, "no contract at registry address"),
        ({"--registry": "COORD"}, "not an Infernet Registry"),
        ({"--rpc-url": "CLOSED"}, "cannot reach an Ethereum JSON-RPC endpoint"),
        ({"--rpc-url": "localhost:8545"}, "RPC URL must look like http://host:port"),
    ],
)
def test_deploy_clear_errors(
    stack: Stack, accounts: Accounts, anvil_url: str, capsys: pytest.CaptureFixture[str],
    change: dict[str, str], message: str,
) -> None:
    args = {
        "--rpc-url": anvil_url, "--private-key": _key(accounts.deployer),
        "--registry": stack.registry.address,
    }
    args.update(change)
    if args["--registry"] == "COORD":
        args["--registry"] = stack.coordinator.address
    if args["--rpc-url"] == "CLOSED":
        args["--rpc-url"] = f"http://127.0.0.1:{free_port()}"
    rc = deploy_consumer.main([x for kv in args.items() for x in kv])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err
    assert accounts.deployer.key.hex() not in err  # the key is never echoed


def _deliver_when_created(stack: Stack, accounts: Accounts, first_new: int, text: str) -> None:
    deadline = time.monotonic() + 20
    while stack.coordinator.functions.id().call() <= first_new:
        assert time.monotonic() < deadline, "the script never created a subscription"
        time.sleep(0.05)
    stack.deliver(accounts.node, first_new, 1, container_result(text))


def test_request_onchain_waits_for_answer(
    stack: Stack, accounts: Accounts, anvil_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    first_new = stack.coordinator.functions.id().call()
    node = threading.Thread(
        target=_deliver_when_created, args=(stack, accounts, first_new, "Blue, mostly."), daemon=True
    )
    node.start()
    rc = request_onchain.main([
        "--rpc-url", anvil_url, "--private-key", _key(accounts.stranger),
        "--consumer", stack.prompter.address, "--prompt", "Is the sky blue?", "--timeout", "20",
    ])
    node.join(timeout=20)
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"subscription {first_new} created" in out
    assert f"from node {accounts.node.address}" in out
    assert out.rstrip().endswith("Blue, mostly.")


def test_request_onchain_timeout_and_wrong_consumer(
    stack: Stack, accounts: Accounts, anvil_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--rpc-url", anvil_url, "--private-key", _key(accounts.stranger)]
    rc = request_onchain.main(
        base + ["--consumer", stack.prompter.address, "--prompt", "anyone?", "--timeout", "0.5"]
    )
    assert rc == 1
    assert "0 of 1 answer(s)" in capsys.readouterr().err
    rc = request_onchain.main(base + ["--consumer", stack.recurring.address, "--prompt", "x"])
    assert rc == 2
    assert "is not an LLMPrompter" in capsys.readouterr().err
    rc = request_onchain.main(base + [
        "--consumer", stack.prompter.address, "--prompt", "x", "--parameters", "[1]",
    ])
    assert rc == 2
    assert "--parameters must be a JSON object" in capsys.readouterr().err


def test_request_onchain_recurring_owner_only(
    stack: Stack, accounts: Accounts, anvil_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--rpc-url", anvil_url, "--consumer", stack.recurring.address, "--prompt", "tick",
            "--frequency", "2", "--period", "60", "--no-wait"]
    assert request_onchain.main(args + ["--private-key", _key(accounts.deployer)]) == 0
    assert "subscription" in capsys.readouterr().out
    assert request_onchain.main(args + ["--private-key", _key(accounts.stranger)]) == 2
    assert "NotOwner()" in capsys.readouterr().err


def test_delegated_dry_run_digest_matches_coordinator(
    stack: Stack, accounts: Accounts, anvil_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = delegated_subscription.main([
        "--rpc-url", anvil_url, "--private-key", _key(accounts.signer),
        "--coordinator", stack.coordinator.address, "--consumer", stack.prompter.address,
        "--prompt", "hi", "--dry-run",
    ])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    body = json.loads(captured.out)
    digest = re.search(r"EIP-712 digest 0x([0-9a-f]{64})", captured.err).group(1)  # type: ignore[union-attr]
    sub, sig = body["subscription"], body["signature"]
    sub_tuple = (
        sub["owner"], sub["active_at"], sub["period"], sub["frequency"], sub["redundancy"],
        bytes.fromhex(sub["containers"][2:]), sub["lazy"], sub["verifier"], sub["payment_amount"],
        sub["payment_token"], sub["wallet"],
    )
    fn = stack.coordinator.functions
    assert fn.delegateSubscriptionDigest(sig["nonce"], sig["expiry"], sub_tuple).call().hex() == digest
    recovered = fn.recoverDelegatee(
        sig["nonce"], sig["expiry"], sub_tuple, sig["v"], sig["r"].to_bytes(32, "big"),
        sig["s"].to_bytes(32, "big"),
    ).call()
    assert recovered == accounts.signer.address
    assert body["data"] == {"text": "hi"}


def test_delegated_clear_errors(
    stack: Stack, accounts: Accounts, anvil_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--rpc-url", anvil_url, "--registry", stack.registry.address, "--prompt", "hi"]
    rc = delegated_subscription.main(
        base + ["--private-key", _key(accounts.stranger), "--consumer", stack.prompter.address]
    )
    assert rc == 2
    assert "is not the consumer's delegated signer" in capsys.readouterr().err
    rc = delegated_subscription.main(
        base + ["--private-key", _key(accounts.signer), "--consumer", stack.recurring.address]
    )
    assert rc == 2
    assert "it is not a Delegator" in capsys.readouterr().err
    rc = delegated_subscription.main(base + [
        "--private-key", _key(accounts.signer), "--consumer", stack.prompter.address,
        "--node-url", f"http://127.0.0.1:{free_port()}",
    ])
    assert rc == 2
    assert "cannot reach the node" in capsys.readouterr().err
