"""The launcher as users run it: `python -m localtgi` in a subprocess."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass

import httpx
import pytest

from localtgi.models import load_model


def launch(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "localtgi", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def until_ready(proc: subprocess.Popen[str]) -> tuple[list[str], str]:
    """The lines localtgi printed up to its ready line, and the URL that line names."""
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("localtgi ready"):
            break
    pattern = r"localtgi ready: model \S+ on (http://127\.0\.0\.1:\d+) \((?:int8|float32) activations\)\n"
    ready = re.fullmatch(pattern, lines[-1])
    assert ready, lines
    return lines, ready.group(1)


def test_serves_until_sigterm_and_ends_streams_with_tgi_errors() -> None:
    with launch("--model-id", "tiny", "--port", "0", "--num-threads", "1",
                "--max-concurrent-requests", "7") as proc:
        lines, url = until_ready(proc)
        assert lines[0] == "localtgi: loading model 'tiny'\n"
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


# The real launcher, plus one line: at exit the process writes the names of its imported modules.
RECORD_MODULES = """
import atexit, json, os, sys
atexit.register(lambda: open(os.environ["MODULES_OUT"], "w").write(json.dumps(sorted(sys.modules))))
from localtgi.cli import main
sys.exit(main(sys.argv[1:]))
"""


def rss_mb(pid: int) -> float:
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


@dataclass(frozen=True)
class Served:
    modules: frozenset[str]  # top-level packages imported by the server process
    ready_mb: float  # at "localtgi ready" (the network may still be compiling)
    warm_mb: float  # after a one-token request: compiled, nothing running
    served_mb: float


@pytest.fixture(scope="module")
def smollm2_served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    """`localtgi --model-id smollm2` after answering a sampled chat request and a grammar request."""
    load_model("smollm2")  # the cache is built (in this process) before the server starts from it
    out = tmp_path_factory.mktemp("modules") / "modules.json"
    proc = subprocess.Popen(
        [sys.executable, "-c", RECORD_MODULES, "--model-id", "smollm2", "--port", "0", "--num-threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "MODULES_OUT": str(out)},
    )
    with proc:
        _, url = until_ready(proc)
        ready_mb = rss_mb(proc.pid)
        one = {"inputs": "Hi", "parameters": {"max_new_tokens": 1}}
        r = httpx.post(f"{url}/generate", json=one, timeout=60)
        assert r.status_code == 200, r.text
        warm_mb = rss_mb(proc.pid)
        chat = {"messages": [{"role": "user", "content": "What is the capital of France?"}],
                "max_tokens": 16, "temperature": 0.7, "seed": 1, "logprobs": True, "top_logprobs": 2}
        r = httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=60)
        assert r.status_code == 200, r.text
        grammar = {"type": "json", "value": {"type": "object", "properties": {"city": {"type": "string"}}}}
        r = httpx.post(f"{url}/generate", timeout=60, json={
            "inputs": "Paris as JSON:", "parameters": {"max_new_tokens": 12, "grammar": grammar}})
        assert r.status_code == 200, r.text
        served = rss_mb(proc.pid)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    modules = frozenset(m.split(".")[0] for m in json.loads(out.read_text()))
    print(f"\nsmollm2 server RSS: ready {ready_mb:.0f} MB, warm idle {warm_mb:.0f} MB, "
          f"after the chat and grammar requests {served:.0f} MB")
    return Served(modules, ready_mb, warm_mb, served)


def test_smollm2_is_served_without_transformers(smollm2_served: Served) -> None:
    assert {"localtgi", "openvino", "llguidance", "tokenizers", "jinja2"} <= smollm2_served.modules
    assert "transformers" not in smollm2_served.modules


def test_smollm2_is_served_without_torch(smollm2_served: Served) -> None:
    assert "torch" not in smollm2_served.modules
