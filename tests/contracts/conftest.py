"""Fixtures for the contract tests: one anvil per session, compiled contracts, a deployed stack, and
(when their sources exist) the real localtgi and container processes on loopback.

Every chain test shares the session's anvil; each test creates its own subscriptions, so state from
other tests never matters. Server processes are started once per session and killed at the end.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

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


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
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


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def anvil_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    chain.compile_contracts()  # once per session; a no-op when contracts/out matches the sources
    port = free_port()
    log = tmp_path_factory.mktemp("anvil") / "anvil.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(ANVIL), "--host", "127.0.0.1", "--port", str(port), "--chain-id", "31337",
             "--mnemonic", MNEMONIC, "--accounts", "8"],
            stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                chain.connect(url, timeout=2)
                break
            except chain.ChainError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"anvil did not start:\n{log.read_text()[-2000:]}") from None
                time.sleep(0.1)
        yield url
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def w3(anvil_url: str) -> Web3:
    return chain.connect(anvil_url)


@dataclass(frozen=True)
class Accounts:
    deployer: LocalAccount
    node: LocalAccount
    node2: LocalAccount
    stranger: LocalAccount
    signer: LocalAccount


@pytest.fixture(scope="session")
def accounts() -> Accounts:
    Account.enable_unaudited_hdwallet_features()
    keys = [
        Account.from_mnemonic(MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}") for i in range(5)
    ]
    return Accounts(*keys)


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


@pytest.fixture(scope="session")
def stack(w3: Web3, accounts: Accounts) -> Stack:
    d = accounts.deployer
    coord_addr = chain.deploy(w3, d, "TestCoordinator")
    # Inbox/Reader/Fee/WalletFactory are not exercised; distinct non-zero markers keep them apart.
    markers = [chain.checksum(f"0x{i:040x}", "marker") for i in (0x1B, 0x2E, 0xFE, 0x3F)]
    reg_addr = chain.deploy(w3, d, "TestRegistry", coord_addr, *markers)
    prompter = chain.deploy(w3, d, "LLMPrompter", reg_addr, chain.CONTAINER_ID, accounts.signer.address)
    recurring = chain.deploy(w3, d, "RecurringPrompter", reg_addr, chain.CONTAINER_ID)
    return Stack(
        w3=w3,
        coordinator=chain.contract(w3, "TestCoordinator", coord_addr),
        registry=chain.contract(w3, "TestRegistry", reg_addr),
        prompter=chain.contract(w3, "LLMPrompter", prompter),
        recurring=chain.contract(w3, "RecurringPrompter", recurring),
    )


def prompt_subscription(stack: Stack, sender: LocalAccount, prompt: str, redundancy: int = 1) -> int:
    """Send promptLLM(Redundant) and return the new subscription id."""
    fn = stack.prompter.functions
    call = fn.promptLLM(prompt) if redundancy == 1 else fn.promptLLMRedundant(prompt, redundancy)
    receipt = chain.transact(stack.w3, sender, call, "promptLLM")
    return int(chain.events(stack.prompter.events.PromptRequested, receipt)[0]["subscriptionId"])


# ---------------------------------------------------------------- real servers (end to end)

def _require_sources() -> None:
    missing = [str(p.relative_to(ROOT)) for p in (CONTAINER_MAIN, LOCALTGI_MAIN) if not p.exists()]
    if missing:
        pytest.skip(f"end-to-end needs the real servers; not built yet: {', '.join(missing)}")


@pytest.fixture(scope="session")
def localtgi_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _require_sources()
    port = free_port()
    log = tmp_path_factory.mktemp("localtgi") / "localtgi.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(PYTHON), "-m", "localtgi", "--model-id", "tiny", "--hostname", "127.0.0.1",
             "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url + "/health", proc, log, 120)
        yield url
    finally:
        _stop(proc)


def start_container(
    upstream: str, log: Path, extra_kw: dict[str, Any] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start the real container against `upstream`; returns (process, base URL)."""
    port = free_port()
    env = dict(os.environ)
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
        _wait_http(url + "/", proc, log, 60)
    except RuntimeError:
        _stop(proc)
        raise
    return proc, url


@pytest.fixture(scope="session")
def container_url(localtgi_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_container(localtgi_url, tmp_path_factory.mktemp("container") / "c.log")
    try:
        yield url
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def broken_container_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real container wired to a loopback port nobody listens on: every job is an error."""
    _require_sources()
    dead = f"http://127.0.0.1:{free_port()}"
    # One try: retrying a refused connection would only make the test slower.
    no_retry = {"retry_params": {"tries": 1, "delay": 0, "backoff": 1, "jitter": 0}}
    proc, url = start_container(dead, tmp_path_factory.mktemp("broken") / "c.log", no_retry)
    try:
        yield url
    finally:
        _stop(proc)
