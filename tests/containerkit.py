"""Helpers shared by the container tests: env builders and a recording sleep."""

from __future__ import annotations

import json
from typing import Any


class Waits(list[float]):
    """An injected sleep that records the waits instead of sleeping."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


def env_for(url: str, **extra: Any) -> dict[str, str]:
    env = {
        "TGI_INF_WORKFLOW_POSITIONAL_ARGS": json.dumps([url, 2]),
        "TGI_INF_WORKFLOW_KW_ARGS": json.dumps(
            {"retry_params": {"tries": 3, "delay": 1, "backoff": 2, "jitter": 0}, "max_new_tokens": 16}
        ),
    }
    env.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
    return env


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RunningContainer:
    """The container as operators run it (`python -m infernet_tgi`, a separate hypercorn process) on a
    free loopback port: `with RunningContainer(env) as url: ...`; stderr is kept in `log`."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.url = ""
        self.log = ""
        self._proc: Any = None

    def __enter__(self) -> str:
        import os
        import subprocess
        import sys
        import tempfile
        import time

        import httpx

        port = free_port()
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "infernet_tgi", "--host", "127.0.0.1", "--port", str(port)],
            env={**os.environ, **self.env},
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )
        self.url = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        while time.monotonic() - started < 20:
            if self._proc.poll() is not None:
                break
            try:
                if httpx.get(self.url + "/", timeout=0.5).status_code == 200:
                    return self.url
            except httpx.TransportError:
                time.sleep(0.05)
        self.__exit__()
        raise RuntimeError(f"container did not start: {self.log}")

    def __exit__(self, *exc: object) -> None:
        import subprocess

        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._stderr.seek(0)
        self.log = self._stderr.read().decode(errors="replace")
        self._stderr.close()


def probe_while(url: str, futures: list[Any]) -> list[float]:
    """Seconds each `GET /` took, asked every 10 ms until every future is done."""
    import time

    import httpx

    latencies: list[float] = []
    with httpx.Client(timeout=5) as probe:
        probe.get(url + "/")
        while not all(f.done() for f in futures):
            started = time.monotonic()
            assert probe.get(url + "/").status_code == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.01)
    return latencies


def assert_responsive(latencies: list[float], limit: float = 0.1) -> None:
    """Every probe within `limit`; on a machine whose load exceeds its CPUs (other processes hold
    them, so each probe also waits for a time slice), the 95th percentile within it and none over 0.5 s."""
    import os

    assert len(latencies) >= 10, latencies
    ordered = sorted(latencies)
    if os.getloadavg()[0] < (os.cpu_count() or 1):
        assert ordered[-1] < limit, ordered[-5:]
    else:
        assert ordered[int(len(ordered) * 0.95)] < limit and ordered[-1] < 0.5, ordered[-5:]
