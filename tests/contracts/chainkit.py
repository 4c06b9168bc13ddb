"""Helpers shared by the contract tests: paths, the deployed-stack handle, process start/stop.

Import from here, not from conftest (several conftest.py files share that module name). Importing
this module puts scripts/ and tests/contracts/ on sys.path so the on-chain scripts import as modules.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from eth_account.signers.local import LocalAccount
from web3 import Web3

ROOT = Path(__file__).resolve().parents[2]
for _path in (ROOT / "scripts", Path(__file__).resolve().parent):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from node_codec import delivery_from_result  # noqa: E402

import chain  # noqa: E402

ANVIL = ROOT / "node_modules" / ".bin" / "anvil"
PYTHON = ROOT / ".venv" / "bin" / "python"
MNEMONIC = "test test test test test test test test test test test junk"  # anvil's default
CONTAINER_MAIN = ROOT / "src" / "infernet_tgi" / "__main__.py"
LOCALTGI_MAIN = ROOT / "src" / "localtgi" / "__main__.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Poll `url` until it answers 200; raise with the process log if it dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} process exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@dataclass(frozen=True)
class Accounts:
    deployer: LocalAccount
    node: LocalAccount
    node2: LocalAccount
    stranger: LocalAccount
    signer: LocalAccount


@dataclass(frozen=True)
class Stack:
    """The deployed fixture chain: coordinator, registry and both consumers."""

    w3: Web3
    coordinator: Any
    registry: Any
    prompter: Any
    recurring: Any

    def deliver(
        self, node: LocalAccount, sub_id: int, interval: int, result: dict[str, Any]
    ) -> Any | None:
        """Play the node: encode `result` like node 1.4.0 and call deliverCompute, or skip it."""
        delivery = delivery_from_result(result)
        if delivery is None:
            return None
        inp, out, proof = delivery
        call = self.coordinator.functions.deliverCompute(sub_id, interval, inp, out, proof, node.address)
        return chain.transact(self.w3, node, call, "deliverCompute")


def prompt_subscription(stack: Stack, sender: LocalAccount, prompt: str, redundancy: int = 1) -> int:
    """Send promptLLM(Redundant) and return the new subscription id."""
    fn = stack.prompter.functions
    call = fn.promptLLM(prompt) if redundancy == 1 else fn.promptLLMRedundant(prompt, redundancy)
    receipt = chain.transact(stack.w3, sender, call, "promptLLM")
    return int(chain.events(stack.prompter.events.PromptRequested, receipt)[0]["subscriptionId"])


def start_container(
    upstream: str, log: Path, extra_kw: dict[str, Any] | None = None, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start the real container against `upstream`; returns (process, base URL)."""
    port = free_port()
    env = {**os.environ, **(extra_env or {})}
    env["TGI_INF_WORKFLOW_POSITIONAL_ARGS"] = json.dumps([upstream, 30])
    kw: dict[str, Any] = {"max_new_tokens": 16, "do_sample": False, **(extra_kw or {})}
    env["TGI_INF_WORKFLOW_KW_ARGS"] = json.dumps(kw)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(PYTHON), "-m", "infernet_tgi", "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/", proc, log, 60)
    except RuntimeError:
        stop(proc)
        raise
    return proc, url
