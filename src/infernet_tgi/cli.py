"""`infernet-tgi`: serve the container under hypercorn.

Use it as the container's entry point (`infernet-tgi --host 0.0.0.0 --port 3000`) or locally. It reads
the environment once; a malformed setting exits with status 2 and a message naming the variable.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Callable

from hypercorn.asyncio import serve
from hypercorn.config import Config
from hypercorn.run import run as hypercorn_run

from . import __version__
from .app import create_app
from .config import Settings
from .errors import ConfigError
from .upstream.http import redact


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="infernet-tgi",
        description="Infernet LLM inference container (TGI / OpenAI-compatible upstreams).",
        epilog="Upstream and limits are set by TGI_INF_* environment variables (see README).",
    )
    parser.add_argument("--host", help="bind address (default TGI_INF_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="bind port (default TGI_INF_PORT or 3000)")
    parser.add_argument("--bind", help="host:port, as hypercorn spells it (overrides --host/--port)")
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes, each with its own upstream pool (1)"
    )
    parser.add_argument("--version", action="version", version=f"infernet-tgi {__version__}")
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        print(f"infernet-tgi: configuration error: {exc}", file=sys.stderr)
        return 2
    host, port = settings.host, settings.port
    if args.bind:
        host, _, raw_port = args.bind.rpartition(":")
        port = int(raw_port)
    host = args.host or host
    port = args.port or port
    settings = dataclasses.replace(settings, host=host, port=port)

    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = 75
    config.graceful_timeout = 5
    logging.getLogger("infernet_tgi").info(
        "infernet-tgi %s on http://%s:%d -> %s at %s (%d worker%s)",
        __version__,
        host,
        port,
        settings.upstream_kind,  # where jobs really go: TGI_INF_UPSTREAM_URLS / RUNPOD_ENDPOINT win
        ", ".join(redact(url) for url in settings.urls),
        args.workers,
        "" if args.workers == 1 else "s",
    )
    loop_factory = _loop_factory()
    if args.workers > 1:
        # Each spawned worker reads the (already validated) environment once, in its own process.
        config.application_path = "infernet_tgi.app:create_app_from_env()"
        config.workers = args.workers
        config.worker_class = "asyncio" if loop_factory is None else "uvloop"
        return hypercorn_run(config)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(settings, config))
    return 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed: a faster event loop for the same code."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _serve(settings: Settings, config: Config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await serve(create_app(settings), config, shutdown_trigger=stop.wait)
