"""The container as a real process (`python -m infernet_tgi ...`), for the server tests.

Use `Container(args, env)` as a context manager: it starts the process on 127.0.0.1 port 0, learns the
port from the startup line, waits until every worker has finished its startup, and keeps the log
lines. `stop()` sends SIGTERM and returns the exit status.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import httpx

_STARTED = re.compile(r"infernet-tgi \S+ on http://(\S+):(\d+) ")


class Container:
    def __init__(self, args: list[str] | None = None, env: dict[str, str] | None = None, **popen: Any):
        given = args or []
        self.args = (
            given
            if any(a.startswith("--bind") for a in given)
            else ["--host", "127.0.0.1", "--port", "0", *given]
        )
        self.env = {**os.environ, **(env or {})}
        self.popen = popen
        self.lines: list[str] = []
        self.url = ""
        self.proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> Container:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "infernet_tgi", *self.args],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            **self.popen,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        workers = int(self.args[self.args.index("--workers") + 1]) if "--workers" in self.args else 1
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                time.sleep(0.2)
                raise RuntimeError("container exited:\n" + "\n".join(self.lines))
            match = next(filter(None, map(_STARTED.search, self.lines)), None)
            ready = sum("Application startup complete" in line for line in self.lines)
            if match and ready >= workers:
                self.url = f"http://{match.group(1)}:{match.group(2)}"
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError("container did not start:\n" + "\n".join(self.lines))

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        with self.proc.stderr:
            for line in self.proc.stderr:
                self.lines.append(line.rstrip("\n"))

    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, fragment: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if fragment in line:
                    return line
            time.sleep(0.02)
        raise AssertionError(f"no log line with {fragment!r}:\n{self.log()}")

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, **kwargs)

    def post_job(self, body: object, **kwargs: Any) -> httpx.Response:
        return httpx.post(self.url + "/service_output", json=body, timeout=60, **kwargs)

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        status = self.proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(5)
        return status

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.wait()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.terminate()
            try:
                self.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
