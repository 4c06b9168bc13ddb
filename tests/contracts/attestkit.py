"""Helpers for the attestation contract tests: a paid-verification stack on the fixture chain.

Use `deploy_attested(w3, accounts, attesters, model_id)` for a fresh coordinator configured for payments
(TestWalletFactory, 1 % protocol fee), an `LLMAttestationVerifier`, an `AttestedLLMPrompter` that pays
through it, and funded wallets for the consumer and the node. Import from here, not from conftest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chainkit import Accounts
from eth_account.signers.local import LocalAccount
from web3 import Web3

import chain

ETH = chain.ZERO_ADDRESS
PAYMENT = 10**16  # per delivery, in wei
VERIFIER_FEE = 10**15
PROTOCOL_FEE_BPS = 100  # 1 %, charged twice on the payment and once on the verifier fee (the SDK's rule)
FUNDING = 10**18


@dataclass(frozen=True)
class AttestedStack:
    w3: Web3
    coordinator: Any
    registry: Any
    factory: Any
    verifier: Any
    prompter: Any
    consumer_wallet: str
    node_wallet: str
    fee_recipient: str

    def balance(self, address: str) -> int:
        return int(self.w3.eth.get_balance(address))  # type: ignore[arg-type]

    def prompt(self, sender: LocalAccount, prompt: str, prompter: Any | None = None) -> int:
        target = prompter if prompter is not None else self.prompter
        receipt = chain.transact(self.w3, sender, target.functions.promptLLM(prompt), "promptLLM")
        return int(chain.events(target.events.PromptRequested, receipt)[0]["subscriptionId"])

    def deliver(self, node: LocalAccount, sub_id: int, delivery: tuple[bytes, bytes, bytes]) -> Any:
        inp, out, proof = delivery
        call = self.coordinator.functions.deliverCompute(sub_id, 1, inp, out, proof, self.node_wallet)
        return chain.transact(self.w3, node, call, "deliverCompute")


def send_eth(w3: Web3, sender: LocalAccount, to: str, value: int) -> None:
    tx = {
        "to": to,
        "value": value,
        "gas": 100_000,
        "gasPrice": w3.eth.gas_price,
        "nonce": w3.eth.get_transaction_count(sender.address, "pending"),
        "chainId": w3.eth.chain_id,
    }
    signed = sender.sign_transaction(tx)
    receipt = w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(signed.raw_transaction))
    assert receipt["status"] == 1


def new_wallet(w3: Web3, factory: Any, owner: LocalAccount, spender: str) -> str:
    """A funded TestWallet owned by `owner` that lets `spender` use all of it."""
    receipt = chain.transact(w3, owner, factory.functions.createWallet(owner.address), "createWallet")
    wallet = str(chain.events(factory.events.WalletCreated, receipt)[0]["wallet"])
    send_eth(w3, owner, wallet, FUNDING)
    handle = chain.contract(w3, "TestWallet", wallet)
    chain.transact(w3, owner, handle.functions.approve(spender, ETH, FUNDING), "approve")
    return wallet


def deploy_attested(w3: Web3, accounts: Accounts, attesters: list[str], model_id: str) -> AttestedStack:
    d = accounts.deployer
    coordinator_addr = chain.deploy(w3, d, "TestCoordinator")
    coordinator = chain.contract(w3, "TestCoordinator", coordinator_addr)
    factory_addr = chain.deploy(w3, d, "TestWalletFactory", coordinator_addr)
    factory = chain.contract(w3, "TestWalletFactory", factory_addr)
    fee_recipient = accounts.signer.address
    chain.transact(
        w3,
        d,
        coordinator.functions.configurePayments(factory_addr, fee_recipient, PROTOCOL_FEE_BPS),
        "configure",
    )
    markers = [chain.checksum(f"0x{i:040x}", "marker") for i in (0x1B, 0x2E, 0xFE)]
    registry_addr = chain.deploy(w3, d, "TestRegistry", coordinator_addr, *markers, factory_addr)
    verifier_addr = chain.deploy(w3, d, "LLMAttestationVerifier", registry_addr, attesters, [model_id])
    verifier = chain.contract(w3, "LLMAttestationVerifier", verifier_addr)
    chain.transact(w3, d, verifier.functions.setFee(ETH, True, VERIFIER_FEE), "setFee")
    prompter_addr = chain.deploy(
        w3, d, "AttestedLLMPrompter", registry_addr, chain.CONTAINER_ID, model_id, attesters
    )
    prompter = chain.contract(w3, "AttestedLLMPrompter", prompter_addr)
    consumer_wallet = new_wallet(w3, factory, d, prompter_addr)
    node_wallet = new_wallet(w3, factory, accounts.node, accounts.node.address)
    call = prompter.functions.setVerification(verifier_addr, ETH, PAYMENT, consumer_wallet)
    chain.transact(w3, d, call, "setVerification")
    return AttestedStack(
        w3=w3,
        coordinator=coordinator,
        registry=chain.contract(w3, "TestRegistry", registry_addr),
        factory=factory,
        verifier=verifier,
        prompter=prompter,
        consumer_wallet=consumer_wallet,
        node_wallet=node_wallet,
        fee_recipient=fee_recipient,
    )


def stored(stack: AttestedStack, sub_id: int, prompter: Any | None = None) -> list[str]:
    """The answers a prompter stored for interval 1 of `sub_id`."""
    fn = (prompter if prompter is not None else stack.prompter).functions
    return [fn.answerAt(sub_id, 1, i).call()[1] for i in range(fn.answerCount(sub_id, 1).call())]
