"""SIGTERM: stop accepting at once, finish what is in flight within the grace period, then exit.

The container runs as a real process (1 and 2 workers) in front of a loopback fake TGI.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from containerkit import env_for
from faketgi import FakeTGI, Ok
from processkit import Container

STREAM_WORDS = 40
STREAM = {"source": 1, "destination": 2, "data": {"text": "long stream"}}
JOB = {"source": 1, "destination": 1, "data": {"text": "slow job"}}


def _env(fake: FakeTGI, **extra: str) -> dict[str, str]:
    return env_for(fake.url, TGI_INF_WORKFLOW_POSITIONAL_ARGS=[fake.url, 30], **extra)  # 8 s waits are fine


@pytest.fixture
def fake() -> Iterator[FakeTGI]:
    with FakeTGI() as server:
        yield server


class _InFlight:
    """A job and a stream sent from threads, with what came back and when."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.job: httpx.Response | None = None
        self.chunks: list[bytes] = []
        self.stream_status = 0
        self.stream_error: Exception | None = None
        self.threads = [threading.Thread(target=self._job), threading.Thread(target=self._stream)]

    def _job(self) -> None:
        self.job = httpx.post(self.url + "/service_output", json=JOB, timeout=60)

    def _stream(self) -> None:
        try:
            with httpx.stream("POST", self.url + "/service_output", json=STREAM, timeout=60) as response:
                self.stream_status = response.status_code
                for chunk in response.iter_raw():
                    self.chunks.append(chunk)
        except httpx.HTTPError as exc:  # a cut connection or a broken chunked body
            self.stream_error = exc

    def join(self) -> None:
        for thread in self.threads:
            thread.join(60)


def _start_both(container: Container, fake: FakeTGI, job: Ok, stream: Ok) -> _InFlight:
    fake.reset()  # whatever the workers asked at startup is not part of the script
    fake.script(job, stream)
    flight = _InFlight(container.url)
    flight.threads[0].start()
    _wait(lambda: len(fake.requests) == 1)  # the fake answers in order: the job takes the 8 s answer
    flight.threads[1].start()
    _wait(lambda: len(flight.chunks) >= 1)
    return flight


def _wait(condition: object, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def _refused(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=1):
            return False
    except OSError:
        return True


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_lets_a_slow_job_and_a_long_stream_finish(fake: FakeTGI, workers: int) -> None:
    words = " ".join(f"w{i}" for i in range(STREAM_WORDS))
    with Container(["--workers", str(workers)], _env(fake)) as container:
        # 8 s each
        flight = _start_both(
            container, fake, Ok(text="slow answer", delay=8.0), Ok(text=words, token_delay=0.2)
        )
        signalled = time.monotonic()
        container.terminate()
        _wait(lambda: _refused(container.url), timeout=3)  # no new connections once told to stop
        refused_after = time.monotonic() - signalled
        flight.join()
        status = container.wait(30)
        exited_after = time.monotonic() - signalled
    assert flight.job is not None and flight.job.status_code == 200, flight.job
    assert flight.job.json()["output"] == "slow answer"
    assert flight.stream_status == 200 and flight.stream_error is None
    assert b"".join(flight.chunks).decode() == words
    assert status == 0
    assert refused_after < 1.5
    assert 5 < exited_after < 20  # it waited for both, and not for the 170 s grace ceiling


def test_after_the_grace_a_job_gets_json_and_a_stream_ends_cleanly(fake: FakeTGI) -> None:
    words = " ".join(f"w{i}" for i in range(STREAM_WORDS))
    env = _env(fake, TGI_INF_SHUTDOWN_GRACE="1.5")
    with Container([], env) as container:
        flight = _start_both(container, fake, Ok(text="never", delay=30.0), Ok(text=words, token_delay=0.2))
        signalled = time.monotonic()
        container.terminate()
        flight.join()
        ended_after = time.monotonic() - signalled
        status = container.wait(30)
    assert flight.job is not None and flight.job.status_code == 503
    assert flight.job.headers["content-type"] == "application/json"
    body = flight.job.json()
    assert body["code"] == "503" and "TGI_INF_SHUTDOWN_GRACE" in body["description"]
    text = b"".join(flight.chunks).decode()
    assert flight.stream_error is None  # a complete chunked body, not a cut connection
    assert 0 < len(text) < len(words) and words.startswith(text)
    assert 1.2 < ended_after < 5
    assert status == 0
    assert "stream ended: the container is shutting down" in container.log()
    assert "Traceback" not in container.log()  # an expected end, not a crash


def test_a_second_sigint_ends_the_grace_period_at_once(fake: FakeTGI) -> None:
    with Container([], _env(fake)) as container:  # grace: the 170 s job deadline
        fake.reset()
        fake.script(Ok(text="never", delay=30.0))
        results: list[httpx.Response] = []
        thread = threading.Thread(target=lambda: results.append(container.post_job(JOB)))
        thread.start()
        _wait(lambda: len(fake.requests) == 1)
        assert container.proc is not None
        container.proc.send_signal(2)
        container.wait_for_line("shutting down: finishing 1 job(s)")
        container.proc.send_signal(2)
        thread.join(10)
        assert container.wait(10) == 0
    assert results and results[0].status_code == 503
