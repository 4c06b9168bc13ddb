"""The `localtgi` launcher (also `python -m localtgi`): flags named like TGI's launcher.

Loads the model first (with progress lines while a GGUF is converted), then serves the app under
hypercorn until Ctrl-C / SIGTERM, which shut it down gracefully. A model that cannot be loaded, or
contradicting flags, exit with status 1 and the error's message. Use `serve` to run an app in an existing
event loop (tests do).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config
from quart import Quart

from localtgi.app_state import stop_generating, until_settled
from localtgi.errors import ModelLoadError, SettingsError
from localtgi.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="localtgi",
        description="A TGI-compatible text-generation server for CPU.",
    )
    d = Settings()
    p.add_argument(
        "--model-id",
        default=d.model_id,
        help="'smollm2' (SmolLM2-135M-Instruct, bundled), 'tiny' (seeded test model), a local "
        "model directory, or a Hugging Face hub id (needs network); default %(default)s",
    )
    p.add_argument("--hostname", default=d.hostname, help="address to bind; default %(default)s")
    p.add_argument("--port", type=int, default=d.port, help="port; 0 picks a free one; default %(default)s")
    p.add_argument(
        "--max-concurrent-requests",
        type=int,
        default=d.max_concurrent_requests,
        help="requests served at once; more get 429 overloaded immediately; default %(default)s",
    )
    p.add_argument(
        "--max-input-tokens",
        "--max-input-length",
        type=int,
        default=None,
        help="largest prompt in tokens (default: max-total-tokens - 1)",
    )
    p.add_argument(
        "--max-total-tokens",
        type=int,
        default=None,
        help="prompt + generated tokens (default: min(model context, 4096))",
    )
    p.add_argument("--max-best-of", type=int, default=d.max_best_of, help="default %(default)s")
    p.add_argument("--max-stop-sequences", type=int, default=d.max_stop_sequences, help="default %(default)s")
    p.add_argument("--max-top-n-tokens", type=int, default=d.max_top_n_tokens, help="default %(default)s")
    p.add_argument(
        "--max-client-batch-size",
        type=int,
        default=d.max_client_batch_size,
        help="most prompts in one /v1/completions request; default %(default)s",
    )
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=d.max_batch_size,
        help="sequences decoded together (continuous batching); default %(default)s",
    )
    p.add_argument(
        "--num-threads",
        type=int,
        default=d.num_threads,
        help="OpenVINO CPU threads for the model; default %(default)s",
    )
    p.add_argument(
        "--exact",
        action="store_true",
        help="decode in float32 instead of on int8-quantized activations: slower, less memory, "
        "matches a float reference",
    )
    p.add_argument(
        "--payload-limit",
        type=int,
        default=d.payload_limit,
        help="largest request body in bytes; default %(default)s",
    )
    p.add_argument(
        "--api-key",
        default=None,
        help="require `Authorization: Bearer <key>` on the generation routes (401 otherwise)",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where converted models are kept (default $LOCALTGI_CACHE or ~/.cache/localtgi)",
    )
    return p


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    """Settings from command-line flags (SettingsError when they contradict each other)."""
    a = build_parser().parse_args(argv)
    return Settings(
        model_id=a.model_id,
        hostname=a.hostname,
        port=a.port,
        max_concurrent_requests=a.max_concurrent_requests,
        max_input_tokens=a.max_input_tokens,
        max_total_tokens=a.max_total_tokens,
        max_best_of=a.max_best_of,
        max_stop_sequences=a.max_stop_sequences,
        max_top_n_tokens=a.max_top_n_tokens,
        max_client_batch_size=a.max_client_batch_size,
        max_batch_size=a.max_batch_size,
        num_threads=a.num_threads,
        exact=a.exact,
        payload_limit=a.payload_limit,
        compute_type=os.environ.get("COMPUTE_TYPE", "cpu"),
        cache_dir=a.cache_dir,
        api_key=a.api_key,
    )


def url_for(hostname: str, port: int) -> str:
    return f"http://[{hostname}]:{port}" if ":" in hostname else f"http://{hostname}:{port}"


async def serve(
    app: Quart,
    settings: Settings,
    *,
    shutdown: asyncio.Event | None = None,
    ready: Callable[[int, bool], None] | None = None,
) -> None:
    """Serve `app` with hypercorn on settings.hostname:port until `shutdown` is set (or, in the main
    thread, SIGINT/SIGTERM arrive). `ready(port, serving)` is called once the engine has compiled
    and warmed up its network (`serving`) or failed to; with port 0 it tells the port the system
    chose. The server answers from the start (/health with 503 until then, requests wait).
    Raises OSError when the address cannot be bound.

    At shutdown the engine stops first (`app.stop_generating`): every stream in flight then ends
    with TGI's error event and every waiting request with its JSON error, well within hypercorn's
    grace period, instead of having its connection cut."""
    stop = shutdown or asyncio.Event()
    family = socket.AF_INET6 if ":" in settings.hostname else socket.AF_INET
    # Binding here (not in hypercorn) makes "address in use" an immediate error and lets port 0 work.
    sock = socket.create_server((settings.hostname, settings.port), family=family)
    port = int(sock.getsockname()[1])
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]  # hypercorn owns and closes the descriptor now
    config.accesslog = None
    config.loglevel = "WARNING"
    config.graceful_timeout = 3.0
    if ready is not None:

        async def announce_when_settled() -> None:
            ready(port, await until_settled(app))

        async def announce() -> None:
            app.add_background_task(announce_when_settled)

        app.before_serving(announce)
    loop = asyncio.get_running_loop()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

    async def stopped() -> None:
        await stop.wait()
        await stop_generating(app)

    await hypercorn_serve(app, config, shutdown_trigger=stopped)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="localtgi: %(levelname)s %(message)s")
    try:
        settings = parse_settings(argv)
    except SettingsError as exc:
        print(f"localtgi: error: {exc}", file=sys.stderr)
        return 2

    def progress(message: str) -> None:
        print(f"localtgi: {message}", flush=True)

    from localtgi.app import create_app
    from localtgi.models import load_model

    progress(f"loading model {settings.model_id!r}")
    try:
        model = load_model(settings.model_id, cache_dir=settings.cache_dir, progress=progress)
        settings.limits_for(model.max_position_embeddings)
    except (ModelLoadError, SettingsError) as exc:
        print(f"localtgi: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C while the model loads or converts
        print("localtgi: interrupted", file=sys.stderr)
        return 130
    app = create_app(settings, model)

    def announce(port: int, serving: bool) -> None:
        if not serving:  # the engine logged why; /health answers 503
            return
        activations = "float32" if settings.exact else "int8"
        print(
            f"localtgi ready: model {model.model_id} on {url_for(settings.hostname, port)}"
            f" ({activations} activations)",
            flush=True,
        )

    try:
        asyncio.run(serve(app, settings, ready=announce))
    except OSError as exc:
        print(
            f"localtgi: error: cannot serve on {url_for(settings.hostname, settings.port)}: {exc}",
            file=sys.stderr,
        )
        return 1
    progress("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
