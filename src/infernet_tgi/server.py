"""The server: binds the port, then runs one worker in-process or supervises several.

Use `serve(settings)` from the CLI once the settings are valid. Binding happens first, in this process,
so a bad address or a port in use is a `ConfigError` (exit 2 naming the port) before anything starts.
Each worker gets its own socket on the same port (SO_REUSEPORT), so the kernel spreads connections
evenly over the workers instead of waking them all for each one. The supervisor forwards SIGTERM and
SIGINT, waits for the workers' grace period (`worker`), replaces a worker that dies, and keeps the
Prometheus multiprocess directory (one per container start, removed at exit) so /metrics sees all.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from prometheus_client.multiprocess import mark_process_dead

from . import __version__
from .config import Settings
from .errors import ConfigError
from .metrics import MULTIPROC_DIR
from .redaction import redact

log = logging.getLogger("infernet_tgi")

# A worker that dies this soon after its start is not replaced: the cause (the environment, the
# machine) would kill the next one too, so the container stops with its status instead of looping.
_EARLY_DEATH = 10.0
# Seconds after the grace period before workers that are still running are killed.
_KILL_AFTER = 5.0


def serve(settings: Settings) -> int:
    """Bind, log the startup line, serve until stopped; the exit status."""
    sockets = bind(settings.host, settings.port, settings.workers)
    port = sockets[0].getsockname()[1]
    log.info(
        "infernet-tgi %s on http://%s:%d -> %s at %s (%d worker%s, backlog %d, shutdown grace %g s)",
        __version__,
        f"[{settings.host}]" if ":" in settings.host else settings.host,
        port,
        settings.upstream_kind,  # where jobs really go: TGI_INF_UPSTREAM_URLS / RUNPOD_ENDPOINT win
        ", ".join(redact(url) for url in settings.urls),
        settings.workers,
        "" if settings.workers == 1 else "s",
        settings.backlog,
        settings.shutdown_grace,
    )
    if settings.workers == 1:
        from .worker import run  # imported here: the supervisor process never loads the app

        return run(settings, sockets[0])
    return _Supervisor(settings, port, sockets).run()


def bind(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` sockets bound to host:port (not listening yet); `ConfigError` if that cannot be done."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(
            f"TGI_INF_HOST/--host/--bind: cannot use address {host!r} ({exc.strerror})"
        ) from exc
    family, _, _, _, address = infos[0]
    # A plain bind first: it fails if anything listens on the port, even another process that also
    # uses SO_REUSEPORT (which would otherwise silently share our port).
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        _bind(probe, address, host, port)
        port = probe.getsockname()[1]  # the OS's choice when port is 0
        address = (address[0], port, *address[2:])
        sockets = [_reuseport(family, address, host, port)]
    sockets += [_reuseport(family, address, host, port) for _ in range(count - 1)]
    return sockets


def _reuseport(family: int, address: tuple[object, ...], host: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.set_inheritable(True)
    _bind(sock, address, host, port)
    return sock


def _bind(sock: socket.socket, address: tuple[object, ...], host: str, port: int) -> None:
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"TGI_INF_PORT/--port/--bind: port {port} on {host} is already in use") from exc
        reason = "permission denied" if exc.errno == errno.EACCES else exc.strerror
        raise ConfigError(
            f"TGI_INF_HOST/TGI_INF_PORT/--bind: cannot bind {host} port {port} ({reason})"
        ) from exc


@dataclass
class _Worker:
    proc: subprocess.Popen[bytes]
    started: float


class _Supervisor:
    """Several workers: start them, replace the dead, stop them together."""

    def __init__(self, settings: Settings, port: int, sockets: list[socket.socket]) -> None:
        self._settings = settings
        self._port = port
        self._sockets = sockets
        self._workers: list[_Worker] = []
        self._parent_r, self._parent_w = os.pipe()  # closes for the workers when we end, however
        self._status = 0

    def run(self) -> int:
        waited = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
        signal.pthread_sigmask(signal.SIG_BLOCK, waited)
        with tempfile.TemporaryDirectory(prefix="infernet-tgi-metrics-") as metrics:
            env = {**os.environ, **self._environment(), MULTIPROC_DIR: metrics}
            log.info("metrics of all workers in %s", metrics)
            for sock in self._sockets:
                self._spawn(sock, env)
            self._sockets.clear()
            stop_by: float | None = None
            while self._workers:
                timeout = 1.0 if stop_by is None else max(0.05, min(1.0, stop_by - time.monotonic()))
                info = signal.sigtimedwait(waited, timeout)
                if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
                    if stop_by is None:
                        log.info(
                            "stopping %d workers (grace %g s)",
                            len(self._workers),
                            self._settings.shutdown_grace,
                        )
                        stop_by = time.monotonic() + self._settings.shutdown_grace + _KILL_AFTER
                        self._signal(signal.SIGTERM)
                    else:
                        self._signal(signal.SIGINT)  # a second Ctrl-C: end the grace period now
                if stop_by is not None and time.monotonic() >= stop_by:
                    log.error("workers still running after the grace period; killing them")
                    self._signal(signal.SIGKILL)
                    stop_by = time.monotonic() + 3600
                self._reap(metrics, env, stopping=stop_by is not None)
        os.close(self._parent_w)
        return self._status

    def _environment(self) -> dict[str, str]:
        """The final settings, so each worker's own `Settings.from_env` reads what this process uses."""
        s = self._settings
        return {
            "TGI_INF_HOST": s.host,
            "TGI_INF_PORT": str(self._port),
            "TGI_INF_WORKERS": str(s.workers),
            "TGI_INF_BACKLOG": str(s.backlog),
            "TGI_INF_SHUTDOWN_GRACE": repr(s.shutdown_grace),
        }

    def _spawn(self, sock: socket.socket, env: dict[str, str]) -> None:
        fd = sock.fileno()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "infernet_tgi.worker",
                "--fd",
                str(fd),
                "--parent-fd",
                str(self._parent_r),
            ],
            env=env,
            pass_fds=(fd, self._parent_r),
            start_new_session=True,  # a terminal's Ctrl-C reaches the workers only through us
        )
        sock.close()  # the worker has its copy
        self._workers.append(_Worker(proc, time.monotonic()))

    def _signal(self, sig: int) -> None:
        for worker in self._workers:
            if worker.proc.poll() is None:
                worker.proc.send_signal(sig)

    def _reap(self, metrics: str, env: dict[str, str], *, stopping: bool) -> None:
        for worker in list(self._workers):
            status = worker.proc.poll()
            if status is None:
                continue
            self._workers.remove(worker)
            mark_process_dead(worker.proc.pid, metrics)  # type: ignore[no-untyped-call]
            if stopping:
                continue
            lived = time.monotonic() - worker.started
            if lived < _EARLY_DEATH:
                log.error(
                    "worker %d exited with status %d after %.1f s; stopping", worker.proc.pid, status, lived
                )
                self._status = status if status > 0 else 1
                self._signal(signal.SIGTERM)
                self._wait_all()
                return
            log.error("worker %d exited with status %d; starting another", worker.proc.pid, status)
            self._spawn(_reuseport(*self._address()), env)

    def _address(self) -> tuple[int, tuple[object, ...], str, int]:
        s = self._settings
        family, _, _, _, address = socket.getaddrinfo(s.host, self._port, type=socket.SOCK_STREAM)[0]
        return family, address, s.host, self._port

    def _wait_all(self) -> None:
        deadline = time.monotonic() + self._settings.shutdown_grace + _KILL_AFTER
        for worker in self._workers:
            try:
                worker.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()
        self._workers.clear()
