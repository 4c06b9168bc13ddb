"""`scripts/run.sh` (what `make run` starts): localtgi and the container wired together, with the
user's own `TGI_INF_*` settings passed through unchanged."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def test_run_script_keeps_a_user_kw_args_value_intact() -> None:
    tgi_port, port = _free_port(), _free_port()
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PYTHONPATH": str(ROOT / "src"),
        "LOCALTGI_MODEL": "tiny",
        "LOCALTGI_PORT": str(tgi_port),
        "CONTAINER_PORT": str(port),
        # The value that used to come out with a stray `}` and stop the container with a config error.
        "TGI_INF_WORKFLOW_KW_ARGS": '{"max_new_tokens": 3, "do_sample": false}',
    }
    proc = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "run.sh")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        seen = []
        deadline = time.monotonic() + 90
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("ready: container"):
                break
            assert time.monotonic() < deadline, "".join(seen)
        else:
            raise AssertionError("run.sh exited before ready:\n" + "".join(seen))
        # make run's localtgi answers as a float run of its weights would (LOCALTGI_ARGS unset)
        assert any(s.startswith("localtgi ready") and "(float32 activations)" in s for s in seen), seen
        answer = _post(
            f"http://127.0.0.1:{port}/service_output",
            {"source": 1, "destination": 1, "data": {"text": "Hello"}},
        )
        assert answer["usage"]["completion_tokens"] <= 3, answer
        assert answer["finish_reason"] in {"length", "eos_token"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
