"""The consumers and the coordinator fixture on a real EVM (anvil), with node-encoded deliveries.

Container results here are built with the container's own formula (raw_output = abi.encode(string
text), the other keys "") and passed through node_codec, which reproduces the node's encoding; the
end-to-end tests replace them with real container output.
"""

from __future__ import annotations

import pytest
from chainkit import Accounts, Stack, prompt_subscription
from eth_abi import decode, encode
from eth_utils import keccak
from node_codec import WedgedInterval, container_result, delivery_from_result
from web3.exceptions import ContractCustomError

import chain


def answers(stack: Stack, sub_id: int, interval: int = 1) -> list[tuple[str, str]]:
    c = stack.prompter.functions
    n = c.answerCount(sub_id, interval).call()
    return [tuple(c.answerAt(sub_id, interval, i).call()) for i in range(n)]


def increase_time(stack: Stack, seconds: int) -> None:
    stack.w3.provider.make_request("evm_increaseTime", [seconds])  # type: ignore[arg-type]
    stack.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]


def test_prompt_creates_callback_subscription(stack: Stack, accounts: Accounts) -> None:
    sub_id = prompt_subscription(stack, accounts.stranger, "Is the sky blue?")
    sub = stack.coordinator.functions.getSubscription(sub_id).call()
    owner, _active_at, period, frequency, redundancy, container_id, lazy = sub[:7]
    assert owner == stack.prompter.address
    assert (period, frequency, redundancy, lazy) == (0, 1, 1, False)
    assert container_id == keccak(encode(["string"], ["tgi_client_inference_service"]))
    inputs = stack.prompter.functions.getContainerInputs(sub_id, 1, 0, accounts.node.address).call()
    assert decode(["string"], inputs) == ("Is the sky blue?",)


def test_chat_with_llm_takes_exactly_abi_encoded_string(stack: Stack, accounts: Accounts) -> None:
    inputs = encode(["string"], ["Is the sky blue? ✓"])
    call = stack.prompter.functions.chatWithLLM(inputs)
    receipt = chain.transact(stack.w3, accounts.stranger, call, "chatWithLLM")
    (ev,) = chain.events(stack.prompter.events.PromptRequested, receipt)
    assert ev["prompt"] == "Is the sky blue? ✓"
    fn = stack.prompter.functions
    assert fn.getContainerInputs(ev["subscriptionId"], 1, 0, accounts.node.address).call() == inputs
    for bad in (encode(["string", "string"], ["a", "{}"]), inputs + b"\0" * 32, b"", b"\x01" * 64):
        with pytest.raises(chain.ChainError, match=r"MalformedInputs\(\)"):
            chain.transact(stack.w3, accounts.stranger, fn.chatWithLLM(bad), "chatWithLLM")


def test_delivery_stores_answer_and_emits_event(stack: Stack, accounts: Accounts) -> None:
    sub_id = prompt_subscription(stack, accounts.stranger, "hello")
    receipt = stack.deliver(accounts.node, sub_id, 1, container_result("Hi there."))
    events = chain.events(stack.prompter.events.AnswerReceived, receipt)
    assert events == [
        {"subscriptionId": sub_id, "interval": 1, "node": accounts.node.address,
         "redundancy": 1, "answer": "Hi there."}
    ]
    assert answers(stack, sub_id) == [(accounts.node.address, "Hi there.")]
    assert stack.prompter.functions.latestAnswer(sub_id).call() == [1, accounts.node.address, "Hi there."]


def test_non_coordinator_caller_is_rejected(stack: Stack, accounts: Accounts) -> None:
    sub_id = prompt_subscription(stack, accounts.stranger, "hello")
    inp, out, proof = delivery_from_result(container_result("forged"))  # type: ignore[misc]
    call = stack.prompter.functions.rawReceiveCompute(
        sub_id, 1, 1, accounts.stranger.address, inp, out, proof, b"\0" * 32, 0
    )
    with pytest.raises(chain.ChainError, match=r"NotCoordinator\(\)"):
        chain.transact(stack.w3, accounts.stranger, call, "rawReceiveCompute")
    assert answers(stack, sub_id) == []


def test_redundancy_and_node_responded_are_enforced(stack: Stack, accounts: Accounts) -> None:
    sub_id = prompt_subscription(stack, accounts.stranger, "two nodes", redundancy=2)
    stack.deliver(accounts.node, sub_id, 1, container_result("first"))
    with pytest.raises(chain.ChainError, match=r"NodeRespondedAlready\(\)"):
        stack.deliver(accounts.node, sub_id, 1, container_result("again"))
    receipt = stack.deliver(accounts.node2, sub_id, 1, container_result("second"))
    ev = chain.events(stack.prompter.events.AnswerReceived, receipt)[0]
    assert ev["redundancy"] == 2
    with pytest.raises(chain.ChainError, match=r"IntervalCompleted\(\)"):
        stack.deliver(accounts.stranger, sub_id, 1, container_result("third"))
    assert answers(stack, sub_id) == [
        (accounts.node.address, "first"), (accounts.node2.address, "second")
    ]
    key = keccak(encode(["uint32", "uint32"], [sub_id, 1]))
    assert stack.coordinator.functions.redundancyCount(key).call() == 2


def test_unknown_subscription_and_wrong_interval(stack: Stack, accounts: Accounts) -> None:
    with pytest.raises(chain.ChainError, match=r"SubscriptionNotFound\(\)"):
        stack.deliver(accounts.node, 999_999, 1, container_result("x"))
    sub_id = prompt_subscription(stack, accounts.stranger, "hello")
    with pytest.raises(chain.ChainError, match=r"IntervalMismatch\(\)"):
        stack.deliver(accounts.node, sub_id, 2, container_result("x"))


def test_recurring_intervals_frequency_and_cancel(stack: Stack, accounts: Accounts) -> None:
    rec = stack.recurring
    call = rec.functions.start("daily summary", 2, 100, 1)
    receipt = chain.transact(stack.w3, accounts.deployer, call, "start")
    sub_id = chain.events(rec.events.RecurringPromptStarted, receipt)[0]["subscriptionId"]
    inputs = rec.functions.getContainerInputs(sub_id, 1, 0, accounts.node.address).call()
    assert decode(["string"], inputs) == ("daily summary",)
    with pytest.raises(chain.ChainError, match=r"SubscriptionNotActive\(\)"):
        stack.deliver(accounts.node, sub_id, 1, container_result("too early"))
    increase_time(stack, 100)
    stack.deliver(accounts.node, sub_id, 1, container_result("one"))
    with pytest.raises(chain.ChainError, match=r"IntervalMismatch\(\)"):
        stack.deliver(accounts.node2, sub_id, 2, container_result("early"))
    increase_time(stack, 100)
    stack.deliver(accounts.node, sub_id, 2, container_result("two"))
    increase_time(stack, 100)
    with pytest.raises(chain.ChainError, match=r"SubscriptionCompleted\(\)"):
        stack.deliver(accounts.node, sub_id, 3, container_result("three"))
    assert rec.functions.answerAt(sub_id, 2, 0).call() == [accounts.node.address, "two"]
    assert rec.functions.latestAnswer(sub_id).call()[0] == 2
    chain.transact(stack.w3, accounts.deployer, rec.functions.cancel(sub_id), "cancel")
    with pytest.raises(chain.ChainError, match=r"SubscriptionNotActive\(\)"):
        stack.deliver(accounts.node2, sub_id, 3, container_result("cancelled"))


def test_recurring_guards(stack: Stack, accounts: Accounts) -> None:
    rec = stack.recurring.functions
    with pytest.raises(chain.ChainError, match=r"NotOwner\(\)"):
        chain.transact(stack.w3, accounts.stranger, rec.start("p", 1, 0, 1), "start")
    with pytest.raises(chain.ChainError, match=r"InvalidSchedule\(\)"):
        chain.transact(stack.w3, accounts.deployer, rec.start("p", 3, 0, 1), "start")
    with pytest.raises(chain.ChainError, match=r"EmptyPrompt\(\)"):
        chain.transact(stack.w3, accounts.deployer, stack.prompter.functions.promptLLM(""), "p")
    assert rec.getContainerInputs(424242, 1, 0, accounts.node.address).call() == b""


def test_empty_answer_is_stored(stack: Stack, accounts: Accounts) -> None:
    """Empty text, encoded as the container encodes it: abi.encode(string "") (64 bytes).

    test_onchain_e2e.py::test_empty_answer_from_real_container gets the same bytes from the container.
    """
    sub_id = prompt_subscription(stack, accounts.stranger, "say nothing")
    stack.deliver(accounts.node, sub_id, 1, container_result(""))
    assert answers(stack, sub_id) == [(accounts.node.address, "")]


def test_answer_over_32_kb(stack: Stack, accounts: Accounts) -> None:
    """A 40 000-byte multi-byte answer, encoded with the container's formula abi.encode(string)."""
    text = ("Ünïcødé ✓ 🚀 " * 2500)[:20_000]
    assert len(text.encode()) > 32 * 1024
    sub_id = prompt_subscription(stack, accounts.stranger, "long")
    stack.deliver(accounts.node, sub_id, 1, container_result(text))
    assert answers(stack, sub_id) == [(accounts.node.address, text)]


def test_error_result_is_not_delivered(stack: Stack, accounts: Accounts) -> None:
    sub_id = prompt_subscription(stack, accounts.stranger, "fail")
    error = {"code": "503", "name": "Service Unavailable", "description": "upstream down"}
    assert stack.deliver(accounts.node, sub_id, 1, error) is None
    # An integer 200 is not the string "200": still an error for the node.
    assert delivery_from_result({**container_result("x"), "code": 200}) is None
    assert delivery_from_result({**container_result("x"), "code": "200"}) is not None
    assert answers(stack, sub_id) == []
    key = keccak(encode(["uint32", "uint32"], [sub_id, 1]))
    assert stack.coordinator.functions.redundancyCount(key).call() == 0


def test_empty_delivery_is_visible_not_stored(stack: Stack, accounts: Accounts) -> None:
    """Node 1.4.0's pre-flight simulation delivers 32 zero bytes as output; it must not revert, and a
    mined delivery without an answer (lazy: empty output) stores nothing."""
    sub_id = prompt_subscription(stack, accounts.stranger, "simulate")
    simulation = stack.coordinator.functions.deliverCompute(
        sub_id, 1, b"", b"\x00" * 32, b"", accounts.node.address
    )
    simulation.call({"from": accounts.node.address})  # the node's eth_call simulation succeeds
    call = stack.coordinator.functions.deliverCompute(sub_id, 1, b"", b"", b"", accounts.node.address)
    receipt = chain.transact(stack.w3, accounts.node, call, "deliverCompute")
    assert chain.events(stack.prompter.events.EmptyDelivery, receipt)
    assert answers(stack, sub_id) == []
    no_answer = "0x" + keccak(text="NoAnswer(uint32,uint32)")[:4].hex()
    with pytest.raises(ContractCustomError, match=no_answer):
        stack.prompter.functions.latestAnswer(sub_id).call()


def test_malformed_output_reverts_delivery(stack: Stack, accounts: Accounts) -> None:
    sub_id = prompt_subscription(stack, accounts.stranger, "garbage")
    bad = stack.coordinator.functions.deliverCompute(
        sub_id, 1, b"", b"\x01" * 160, b"", accounts.node.address
    )
    with pytest.raises(chain.ChainError, match="reverted"):
        chain.transact(stack.w3, accounts.node, bad, "deliverCompute")
    assert answers(stack, sub_id) == []


def test_node_codec_rejects_what_wedges_the_node() -> None:
    with pytest.raises(WedgedInterval):
        delivery_from_result({**container_result("x"), "raw_output": "0x00"})
    with pytest.raises(WedgedInterval):
        delivery_from_result({**container_result("x"), "proof": "abc"})
    with pytest.raises(WedgedInterval):
        delivery_from_result(["not", "a", "dict"])
    # Missing keys: the node's fallback sends the Python repr as abi.encode(string).
    inp, out, proof = delivery_from_result({"output": "x"})  # type: ignore[misc]
    assert (inp, proof) == (b"", b"")
    assert decode(["string"], out) == ("{'output': 'x'}",)
