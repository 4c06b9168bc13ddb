"""Shared by the engine tests: one localtgi process (tiny model) per test session, and env builders.

`localtgi_url()` starts `python -m localtgi --model-id tiny` on a free loopback port the first time it
is called and stops it when the session's interpreter exits, so every test module shares ONE instance.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@functools.cache
def _start_localtgi() -> str:
    port = free_port()
    log = open(ROOT / ".pytest_cache" / "localtgi-engines.log", "wb")  # noqa: SIM115 - lives all session
    proc = subprocess.Popen(
        [sys.executable, "-m", "localtgi", "--model-id", "tiny", "--hostname", "127.0.0.1",
         "--port", str(port), "--num-threads", "1"],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()

    atexit.register(stop)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"localtgi exited with {proc.returncode}; see {log.name}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("localtgi did not become healthy within 90 s")


def localtgi_url() -> str:
    """The shared localtgi's base URL (skips the test when the localtgi module is missing)."""
    if importlib.util.find_spec("localtgi") is None:
        pytest.skip("module localtgi is missing")
    (ROOT / ".pytest_cache").mkdir(exist_ok=True)
    return _start_localtgi()


def engine_env(*urls: str, tries: int = 1, **extra: Any) -> dict[str, str]:
    """Container env for `urls` (TGI_INF_UPSTREAM_URLS) plus TGI_INF_* extras."""
    env = {
        "TGI_INF_WORKFLOW_POSITIONAL_ARGS": json.dumps([urls[0], 10]),
        "TGI_INF_WORKFLOW_KW_ARGS": json.dumps(
            {"retry_params": {"tries": tries, "delay": 1, "backoff": 2, "jitter": 0}, "max_new_tokens": 16}
        ),
        "TGI_INF_UPSTREAM_URLS": ",".join(urls),
    }
    env.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
    return env


def job(data: dict[str, Any], destination: int = 1) -> dict[str, Any]:
    return {"source": 1, "destination": destination, "data": data, "requires_proof": False}
