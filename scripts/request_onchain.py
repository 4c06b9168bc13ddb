"""Send an on-chain prompt to a deployed LLM consumer and wait for the node's answer.

Usage (one-off prompt to an LLMPrompter):
    python scripts/request_onchain.py --consumer 0x... --prompt "Is the sky blue?" \\
        [--parameters '{"max_new_tokens": 64}'] [--redundancy 1] [--timeout 120] [--no-wait]
Recurring prompt (RecurringPrompter, owner only):
    python scripts/request_onchain.py --consumer 0x... --prompt "..." --frequency 3 --period 60

--rpc-url and --private-key default to RPC_URL and PRIVATE_KEY. Prints the subscription id, then each
answer as its AnswerReceived event arrives; exits 1 if none arrives before --timeout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3

import chain


def send_prompt(
    w3: Web3,
    account: LocalAccount,
    consumer: str,
    prompt: str,
    parameters: dict[str, Any] | None = None,
    redundancy: int = 1,
    frequency: int = 1,
    period: int = 0,
) -> tuple[int, int]:
    """Send the prompt transaction; returns (subscription id, block number)."""
    address = chain.require_code(w3, consumer, "consumer")
    if not prompt:
        raise chain.ChainError("--prompt must not be empty")
    recurring = frequency > 1 or period > 0
    if recurring:
        if parameters is not None or redundancy < 1:
            raise chain.ChainError("--parameters is for one-off prompts; --redundancy must be >= 1")
        if not chain.has_function(w3, address, "start(string,uint32,uint32,uint16)"):
            raise chain.ChainError(f"{address} is not a RecurringPrompter (no start(...) function)")
        c = chain.contract(w3, "RecurringPrompter", address)
        call = c.functions.start(prompt, frequency, period, redundancy)
        event = c.events.RecurringPromptStarted
    else:
        if not chain.has_function(w3, address, "promptLLM(string)"):
            raise chain.ChainError(f"{address} is not an LLMPrompter (no promptLLM(string) function)")
        c = chain.contract(w3, "LLMPrompter", address)
        if parameters is not None:
            call = c.functions.promptLLMWithParameters(prompt, json.dumps(parameters))
        elif redundancy != 1:
            call = c.functions.promptLLMRedundant(prompt, redundancy)
        else:
            call = c.functions.promptLLM(prompt)
        event = c.events.PromptRequested
    receipt = chain.transact(w3, account, call, "sending the prompt")
    logs = chain.events(event, receipt)
    if not logs:
        raise chain.ChainError("the prompt transaction emitted no subscription event")
    return int(logs[0]["subscriptionId"]), int(receipt["blockNumber"])


def wait_for_answers(
    w3: Web3,
    consumer: str,
    subscription_id: int,
    from_block: int,
    count: int,
    timeout: float,
    on_answer: Callable[[dict[str, Any]], None],
    poll: float = 0.5,
) -> int:
    """Poll AnswerReceived events for the subscription; returns how many arrived before `timeout`."""
    c = chain.contract(w3, "LLMPrompter", chain.checksum(consumer, "consumer"))
    seen: set[tuple[str, int]] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < count:
        logs = c.events.AnswerReceived().get_logs(
            from_block=from_block, argument_filters={"subscriptionId": subscription_id}
        )
        for log in logs:
            key = (log["transactionHash"].hex(), int(log["logIndex"]))
            if key not in seen:
                seen.add(key)
                on_answer(dict(log["args"]))
        if len(seen) >= count or time.monotonic() >= deadline:
            break
        time.sleep(poll)
    return len(seen)


def _parse_parameters(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise chain.ChainError(f"--parameters is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise chain.ChainError("--parameters must be a JSON object, e.g. '{\"max_new_tokens\": 64}'")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    chain.add_chain_arguments(parser, registry=False)
    parser.add_argument("--consumer", required=True, help="LLMPrompter / RecurringPrompter address")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--parameters", help="JSON object of TGI generation parameters")
    parser.add_argument("--redundancy", type=int, default=1, help="nodes that must answer")
    parser.add_argument("--frequency", type=int, default=1, help="intervals (recurring if > 1)")
    parser.add_argument("--period", type=int, default=0, help="seconds per interval (recurring)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for answers")
    parser.add_argument("--answers", type=int, help="answers to wait for (default: redundancy)")
    parser.add_argument("--no-wait", action="store_true", help="exit after the transaction")
    args = parser.parse_args(argv)
    try:
        account = chain.load_account(args.private_key)
        w3 = chain.connect(args.rpc_url)
        parameters = _parse_parameters(args.parameters)
        sub_id, block = send_prompt(
            w3, account, args.consumer, args.prompt, parameters,
            args.redundancy, args.frequency, args.period,
        )
    except chain.ChainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"subscription {sub_id} created in block {block} by {account.address}", flush=True)
    if args.no_wait:
        print("not waiting; answers arrive as AnswerReceived events on the consumer")
        return 0
    wanted = args.answers or args.redundancy
    print(f"waiting up to {args.timeout:g} s for {wanted} answer(s)...", flush=True)

    def show(ev: dict[str, Any]) -> None:
        print(
            f"answer for subscription {ev['subscriptionId']} interval {ev['interval']} "
            f"from node {ev['node']} (redundancy {ev['redundancy']}):",
            flush=True,
        )
        print(ev["answer"], flush=True)

    got = wait_for_answers(w3, args.consumer, sub_id, block, wanted, args.timeout, show)
    if got < wanted:
        print(
            f"error: {got} of {wanted} answer(s) after {args.timeout:g} s. Check that an Infernet "
            "node with this consumer's container is running on this chain (its /info shows "
            "chain.enabled true) and read the node log for 'Container execution errored'.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
