"""The container as operators run it: a separate hypercorn process, real HTTP, every job shape."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from eth_abi.abi import decode, encode

from containerkit import env_for
from faketgi import FakeTGI, Ok


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_container(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str, float]:
    port = free_port()
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "infernet_tgi", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    while time.monotonic() - started < 40:
        try:
            if httpx.get(url + "/", timeout=0.5).status_code == 200:
                return proc, url, time.monotonic() - started
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "container did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()


@pytest.fixture(scope="module")
def fake_e2e() -> Iterator[FakeTGI]:
    with FakeTGI() as server:
        yield server


@pytest.fixture(scope="module")
def container(fake_e2e: FakeTGI) -> Iterator[str]:
    proc, url, _ = start_container(env_for(fake_e2e.url))
    yield url
    stop(proc)


def job(url: str, body: object) -> httpx.Response:
    return httpx.post(url + "/service_output", json=body, timeout=30)


def test_every_job_shape_over_real_http(container: str, fake_e2e: FakeTGI) -> None:
    off = job(container, {"source": 1, "destination": 1, "data": {"text": "hi"}, "requires_proof": False})
    assert off.status_code == 200 and off.headers["content-type"] == "application/json"
    assert off.json()["output"] == "echo: hi"

    data = encode(["string"], ["Is the sky blue during a clear day?"]).hex()
    on = job(container, {"source": 0, "destination": 0, "data": data, "requires_proof": False}).json()
    assert on["raw_input"] == data
    assert decode(["string"], bytes.fromhex(on["raw_output"])) == (
        "echo: Is the sky blue during a clear day?",
    )

    delegated = job(container, {"source": 1, "destination": 0, "data": {"text": "d"}}).json()
    assert decode(["string"], bytes.fromhex(delegated["raw_output"])) == ("echo: d",)

    chained = job(container, {"source": 1, "destination": 1, "data": off.json()}).json()
    assert chained["output"] == "echo: echo: hi"

    stream = job(container, {"source": 1, "destination": 2, "data": {"text": "s t"}})
    assert stream.status_code == 200 and stream.text == "echo: s t"

    proof = job(container, {"source": 1, "destination": 1, "data": {"text": "x"}, "requires_proof": True})
    assert proof.status_code == 400 and proof.json()["code"] == "400"

    metrics = httpx.get(container + "/metrics").text
    assert 'outcome="ok",source="offchain"' in metrics


def test_stream_chunks_arrive_as_generated(container: str, fake_e2e: FakeTGI) -> None:
    fake_e2e.script(Ok(text="a b c d", token_delay=0.2))
    arrivals: list[tuple[float, bytes]] = []
    started = time.monotonic()
    body = {"source": 1, "destination": 2, "data": {"text": "x"}}
    with httpx.stream("POST", container + "/service_output", json=body, timeout=30) as response:
        for chunk in response.iter_raw():
            arrivals.append((time.monotonic() - started, chunk))
    assert b"".join(c for _, c in arrivals) == b"a b c d"
    assert len(arrivals) >= 3  # not buffered into one body
    assert arrivals[0][0] < arrivals[-1][0] - 0.3


def test_client_disconnect_cancels_the_upstream_stream(container: str, fake_e2e: FakeTGI) -> None:
    fake_e2e.reset()
    fake_e2e.script(Ok(text=" ".join(["w"] * 200), token_delay=0.05))
    body = {"source": 1, "destination": 2, "data": {"text": "long"}}
    with httpx.stream("POST", container + "/service_output", json=body, timeout=30) as response:
        chunks = response.iter_raw()  # kept: a dropped iterator would close the connection at once
        assert next(chunks)
        assert in_flight(container) == 1.0  # a stream counts until its body ends
        assert fake_e2e.disconnects == 0
    deadline = time.monotonic() + 5
    while fake_e2e.disconnects == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake_e2e.disconnects == 1  # the upstream saw us hang up long before its 10 s of tokens
    assert in_flight(container) == 0.0


def in_flight(url: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("infernet_tgi_jobs_in_flight "):
            return float(line.split()[1])
    raise AssertionError("no in-flight gauge")


def test_ready_without_waiting_for_a_silent_backend() -> None:
    # A backend that takes the TCP connection and never answers: a start-up that waited on it would
    # hang for the whole 60 s upstream timeout. How fast start-up is depends on the box's load, so the
    # check is against that timeout, not a wall-clock goal.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        backend = f"http://127.0.0.1:{silent.getsockname()[1]}"
        env = {"TGI_INF_WORKFLOW_POSITIONAL_ARGS": json.dumps([backend, 60])}
        proc, _url, ready_after = start_container(env)
        try:
            assert ready_after < 30.0
        finally:
            stop(proc)


def test_jobs_get_503_with_backend_down() -> None:
    proc, url, _ready_after = start_container(
        {
            **env_for("http://127.0.0.1:9"),
            "TGI_INF_WORKFLOW_KW_ARGS": json.dumps({"retry_params": {"tries": 2, "delay": 0.1}}),
        }
    )
    try:
        response = job(url, {"source": 1, "destination": 1, "data": {"text": "x"}})
        assert response.status_code == 503
        assert response.json()["description"].startswith("upstream unreachable at http://127.0.0.1:9")
    finally:
        stop(proc)
