"""Fixtures for the contract tests: one anvil per session, compiled contracts, a deployed stack, and
(when their sources exist) the real localtgi and container processes on loopback.

Every chain test shares the session's anvil; each test creates its own subscriptions, so state from
other tests never matters. Server processes are started once per session and killed at the end.
Shared helpers live in chainkit.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chainkit import (  # noqa: E402
    ANVIL,
    CONTAINER_MAIN,
    LOCALTGI_MAIN,
    MNEMONIC,
    PYTHON,
    ROOT,
    Accounts,
    Stack,
    free_port,
    start_container,
    stop,
    wait_http,
)

import chain  # noqa: E402


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
        stop(proc)


@pytest.fixture(scope="session")
def w3(anvil_url: str) -> Web3:
    return chain.connect(anvil_url)


@pytest.fixture(scope="session")
def accounts() -> Accounts:
    Account.enable_unaudited_hdwallet_features()
    keys = [
        Account.from_mnemonic(MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}") for i in range(5)
    ]
    return Accounts(*keys)


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
        wait_http(url + "/health", proc, log, 120)
        yield url
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def container_url(localtgi_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_container(localtgi_url, tmp_path_factory.mktemp("container") / "c.log")
    try:
        yield url
    finally:
        stop(proc)


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
        stop(proc)
