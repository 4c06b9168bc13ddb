"""The launcher as users run it: `python -m localtgi` in a subprocess."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys

import httpx


def launch(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "localtgi", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_serves_until_sigterm_and_ends_streams_with_tgi_errors() -> None:
    with launch("--model-id", "tiny", "--port", "0", "--num-threads", "1",
                "--max-concurrent-requests", "7") as proc:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("localtgi ready"):
                break
        ready = re.fullmatch(r"localtgi ready: model tiny on (http://127\.0\.0\.1:\d+)\n", lines[-1])
        assert ready, lines
        assert lines[0] == "localtgi: loading model 'tiny'\n"
        url = ready.group(1)
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        assert httpx.get(f"{url}/info", timeout=10).json()["max_concurrent_requests"] == 7
        long = {"inputs": "Hello", "parameters": {"max_new_tokens": 1900}}
        with httpx.stream("POST", f"{url}/generate_stream", json=long, timeout=30) as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("data:{")  # a stream in flight when the signal comes
            proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]  # read to the end: no cut connection
        assert json.loads(rest[-1][len("data:") :]) == {
            "error": "Incomplete generation stream", "error_type": "incomplete_generation_stream"}
        out, _ = proc.communicate(timeout=15)
        assert proc.returncode == 0 and out == "localtgi: stopped\n"


def test_bad_model_and_bad_flags_exit_non_zero() -> None:
    with launch("--model-id", "/nonexistent/model/dir") as proc:
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "localtgi: error: model path '/nonexistent/model/dir' does not exist" in err
    with launch("--max-input-tokens", "100", "--max-total-tokens", "50") as proc:
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "`max_input_tokens` must be < `max_total_tokens`. Given: 100 and 50" in err


def test_port_in_use_exits_non_zero() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with launch("--model-id", "tiny", "--port", str(port)) as proc:
            out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "localtgi ready" not in out
    assert f"localtgi: error: cannot serve on http://127.0.0.1:{port}: " in err
