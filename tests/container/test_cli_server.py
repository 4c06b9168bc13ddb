"""The server underneath, as a real process: descriptors, workers sharing the load, one /metrics for
the whole container, and no password in any log line."""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from containerkit import env_for
from faketgi import FakeTGI
from processkit import Container

JOB = {"source": 1, "destination": 1, "data": {"text": "hi"}}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeTGI]:
    with FakeTGI() as server:
        yield server


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _address(container: Container) -> tuple[str, int]:
    host, _, port = container.url.removeprefix("http://").rpartition(":")
    return host, int(port)


def test_closed_connections_are_released_at_once_and_running_out_is_logged(fake: FakeTGI) -> None:
    with Container([], env_for(fake.url)) as container:
        assert container.proc is not None
        pid = container.proc.pid
        baseline = _open_fds(pid)
        # Closed keep-alive connections give their descriptors back at once (no 75 s linger).
        for _ in range(5):
            with httpx.Client() as client:
                for _ in range(60):
                    assert client.get(container.url + "/").status_code == 200
        clients = []
        for _ in range(200):
            sock = socket.create_connection(_address(container))
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            clients.append(sock)
        for sock in clients:
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            sock.close()
        deadline = time.monotonic() + 2
        while _open_fds(pid) > baseline + 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _open_fds(pid) <= baseline + 5

        # Out of descriptors: logged, and service is back as soon as connections close.
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (128, 128))
        held = [socket.create_connection(_address(container)) for _ in range(300)]
        container.wait_for_line("out of file descriptors", timeout=5)
        for sock in held:
            sock.close()
        closed = time.monotonic()
        assert container.get("/").status_code == 200
        assert container.post_job(JOB).json()["output"] == "echo: hi"
        assert time.monotonic() - closed < 1.0
        container.wait_for_line("file descriptors available again", timeout=5)


def test_workers_share_connections_and_metrics_cover_the_container(fake: FakeTGI) -> None:
    with Container(["--workers", "2", "--backlog", "512"], env_for(fake.url)) as container:
        assert _listeners(_address(container)[1]) == [512, 512]  # one socket per worker, our backlog
        jobs = 80
        # A new connection per job: the kernel spreads connections over the workers' sockets.
        with httpx.Client(headers={"Connection": "close"}) as client, ThreadPoolExecutor(4) as pool:
            answers = list(
                pool.map(lambda _: client.post(container.url + "/service_output", json=JOB), range(jobs))
            )
        assert all(a.status_code == 200 for a in answers)
        served = _jobs_by_worker(container)
        assert len(served) == 2 and min(served.values()) >= jobs // 6, served
        for _ in range(6):  # whichever worker answers the scrape, it counts the whole container
            text = container.get("/metrics").text
            assert (
                _sample(
                    text, 'infernet_tgi_jobs_total{destination="offchain",outcome="ok",source="offchain"}'
                )
                == jobs
            )
            assert _sample(text, "infernet_tgi_jobs_in_flight") == 0.0
            assert text.count("# TYPE infernet_tgi_jobs_total counter") == 1


def _listeners(port: int) -> list[int]:
    """The backlog of every socket listening on `port`, as the kernel reports it (`ss`, iproute2)."""
    done = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    return sorted(int(line.split()[2]) for line in done.stdout.splitlines() if line.strip())


def _jobs_by_worker(container: Container) -> dict[str, float]:
    """Jobs per worker pid, read from each worker's own file in the multiprocess directory."""
    line = container.wait_for_line("metrics of all workers in ")
    metrics_dir = line.split("metrics of all workers in ")[1].strip()
    served: dict[str, float] = {}
    for name in os.listdir(metrics_dir):
        match = re.fullmatch(r"counter_(\d+)\.db", name)
        if match:
            for metric in MultiProcessCollector.merge([os.path.join(metrics_dir, name)]):
                if metric.name == "infernet_tgi_jobs":
                    served[match.group(1)] = sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return served


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {name} in\n{text}")


def test_no_password_in_any_log_line(fake: FakeTGI) -> None:
    secret_url = fake.url.replace("http://", "http://operator:hunter2@")
    env = env_for(
        secret_url, TGI_INF_LOG_LEVEL="DEBUG", TGI_INF_UPSTREAM_URLS=f"{secret_url},http://x:pw@127.0.0.1:9"
    )
    with Container([], env) as container:
        container.post_job(JOB)
        container.get("/service-resources")
        time.sleep(0.3)
    log = container.log()
    assert "127.0.0.1:9" in log and fake.url in log  # the URLs are logged, without their secrets
    assert "hunter2" not in log and "operator" not in log and "x:pw" not in log


def _workers(container: Container) -> list[int]:
    assert container.proc is not None
    children = Path(f"/proc/{container.proc.pid}/task/{container.proc.pid}/children").read_text()
    return [int(pid) for pid in children.split()]


def test_a_worker_that_dies_is_replaced_and_one_that_cannot_start_stops_the_container(fake: FakeTGI) -> None:
    with Container(["--workers", "2"], env_for(fake.url)) as container:
        first, second = _workers(container)
        time.sleep(10.5)  # a worker dying in its first 10 s stops the container instead (below)
        os.kill(first, signal.SIGKILL)
        container.wait_for_line(f"worker {first} exited with status -9; starting another")
        deadline = time.monotonic() + 20
        while sum("Application startup complete" in line for line in container.lines) < 3:
            assert time.monotonic() < deadline, container.log()
            time.sleep(0.05)
        assert second in _workers(container) and len(_workers(container)) == 2
        assert all(container.post_job(JOB).status_code == 200 for _ in range(10))

    with Container(["--workers", "2"], env_for(fake.url)) as container:
        os.kill(_workers(container)[0], signal.SIGKILL)
        assert container.wait(30) != 0  # not a crash loop: the container stops and says why
        assert "exited with status -9 after" in container.log()
