"""A worker process: the app under uvicorn on one listening socket, and how it stops.

Use `run(settings, sock)`; the launcher (`server`) calls it in-process for one worker and starts
`python -m infernet_tgi.worker --fd N` for each of several. On SIGTERM or SIGINT the worker stops
accepting at once, closes idle connections, and lets jobs and streams in flight finish within
`TGI_INF_SHUTDOWN_GRACE` (the `Drain`); after that a job still running gets a JSON 503 and a stream ends
cleanly. A second signal ends the grace period early. A worker whose launcher is gone stops the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import math
import os
import resource
import signal
import socket
import sys
from collections.abc import Callable

import uvicorn

from .app import create_app
from .config import Settings
from .drain import Drain
from .errors import ConfigError
from .logs import configure

log = logging.getLogger("infernet_tgi")

# Seconds uvicorn waits after the grace period for the answers it produced (JSON errors, stream ends)
# to be written before it cancels what is left.
_FLUSH = 3
# Net allocations between young-generation collections (CPython's default: 700).
GC_YOUNG = 50_000


def run(settings: Settings, sock: socket.socket, *, parent_fd: int | None = None) -> int:
    """Serve on `sock` (bound, not yet listening) until told to stop; the exit status."""
    raise_descriptor_limit()
    drain = Drain(settings.shutdown_grace)
    config = uvicorn.Config(
        create_app(settings, drain=drain),
        loop="none",  # ours, below
        http="httptools",
        ws="none",
        lifespan="on",
        log_config=None,  # our handler and redacting formatter (`logs`) print uvicorn's lines too
        access_log=False,
        proxy_headers=False,
        server_header=False,
        backlog=settings.backlog,
        # Idle keep-alive connections are closed after 20 s, later than clients give up on them
        # (aiohttp, the node's client, after 15 s), so a client never reuses one we are closing.
        # Connections the client closes are released at once.
        timeout_keep_alive=20,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace) + _FLUSH,
    )
    server = uvicorn.Server(config)
    # Everything imported and built so far lives as long as the process: moved out of the cyclic
    # collector's reach, so its full collections (frequent with a thousand jobs in flight, whose
    # objects live long enough to reach the oldest generation) walk the jobs' objects only; and
    # young collections every GC_YOUNG net allocations instead of 700 (measured: a quarter of the
    # CPU per job at a thousand jobs in flight went to the collector, a tenth at 64). A job's
    # objects are freed by reference counting when it ends: 960 hostile 1 MB bodies refused left
    # the peak RSS the same at 700 and at GC_YOUNG.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve(server, sock, drain, parent_fd))
    return 0


async def _serve(server: uvicorn.Server, sock: socket.socket, drain: Drain, parent_fd: int | None) -> None:
    loop = asyncio.get_running_loop()
    _Descriptors().start(loop)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    # serve() installs uvicorn's own SIGINT/SIGTERM handlers before its first await; ours replace
    # them so that the app's drain starts together with uvicorn's shutdown.
    await asyncio.sleep(0)

    def stop() -> None:
        if drain.begun:
            drain.hurry()
            return
        drain.begin()
        server.should_exit = True  # uvicorn: close the listener, close idle connections, wait

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    if parent_fd is not None:

        def parent_gone() -> None:
            loop.remove_reader(parent_fd)
            if not drain.begun:
                log.warning("the launcher is gone; stopping")
                stop()

        loop.add_reader(parent_fd, parent_gone)
    try:
        await serving
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


class _Descriptors:
    """Watches this process's open file descriptors against its limit, once a second.

    At the limit the kernel cannot hand over new connections: uvloop then accepts and closes them
    at once (clients see a reset) and says nothing. This logs when that starts and when it ends;
    closed connections give their descriptors back immediately, so service resumes by itself."""

    INTERVAL = 1.0
    MARGIN = 4  # the event loop keeps a spare descriptor for exactly this situation

    def __init__(self) -> None:
        self.exhausted = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if os.path.isdir("/proc/self/fd"):
            loop.call_later(self.INTERVAL, self._check, loop)

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        try:
            used = len(os.listdir("/proc/self/fd"))  # needs a descriptor itself
        except OSError:
            used = limit
        full = limit != resource.RLIM_INFINITY and used >= limit - self.MARGIN
        if full and not self.exhausted:
            log.error(
                "out of file descriptors (%d open, limit %d): new connections are refused until some "
                "close; raise the open-files limit (ulimit -n, docker --ulimit nofile)",
                used,
                limit,
            )
        elif self.exhausted and not full:
            log.warning("file descriptors available again (%d open, limit %d)", used, limit)
        self.exhausted = full
        loop.call_later(self.INTERVAL, self._check, loop)


def raise_descriptor_limit() -> None:
    """Lift the soft open-files limit to the hard one (many images start at a soft 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed: a faster event loop for the same code."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    """Entry point of a worker started by the launcher (settings come from its environment)."""
    parser = argparse.ArgumentParser(prog="infernet-tgi worker")
    parser.add_argument("--fd", type=int, required=True, help="the bound listening socket")
    parser.add_argument("--parent-fd", type=int, help="read end of a pipe that closes when the launcher ends")
    args = parser.parse_args(argv)
    # The launcher blocks these while it waits for them; a worker handles them itself.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD})
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        print(f"infernet-tgi: configuration error: {exc}", file=sys.stderr)
        return 2
    configure(settings.log_level)
    return run(settings, socket.socket(fileno=args.fd), parent_fd=args.parent_fd)


if __name__ == "__main__":
    sys.exit(main())
