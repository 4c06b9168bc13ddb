"""The startup log names the upstream jobs really go to, not the positional URL they override."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _startup_line(env: dict[str, str]) -> str:
    proc = subprocess.Popen(
        [sys.executable, "-m", "infernet_tgi", "--port", str(_free_port())],
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), **env},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        for line in proc.stderr:
            if "infernet-tgi" in line and " -> " in line:
                return line
            assert time.monotonic() < deadline
        raise AssertionError("no startup line")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        if proc.stderr is not None:
            proc.stderr.close()


def test_startup_log_names_the_pool_not_the_positional_url() -> None:
    line = _startup_line(
        {
            "TGI_INF_WORKFLOW_POSITIONAL_ARGS": '["http://positional-only:8080", 30]',
            "TGI_INF_UPSTREAM_URLS": "http://user:secret@tgi-a:80,http://tgi-b:80",
        }
    )
    assert "-> tgi at http://tgi-a:80, http://tgi-b:80 " in line
    assert "positional-only" not in line and "secret" not in line


def test_startup_log_names_the_runpod_endpoint() -> None:
    line = _startup_line(
        {
            "TGI_INF_UPSTREAM_KIND": "runpod",
            "TGI_INF_RUNPOD_ENDPOINT": "abc123",
            "TGI_INF_API_KEY": "rpa_key",
            "TGI_INF_MODEL": "m",
        }
    )
    assert "-> runpod at https://api.runpod.ai/v2/abc123 " in line
