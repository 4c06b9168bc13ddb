"""The Quart app an Infernet node calls: `POST /service_output` and its neighbours.

Use `create_app(settings)` and serve it with uvicorn (see `server` and `worker`). The app's lifespan
builds the process's one `Core` (HTTP client, upstream, retries, metrics) and closes it at shutdown.
Every failure leaves as the Ritual JSON error body with the real cause; every success is JSON, except
stream jobs, which get raw UTF-8 text chunks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from . import __version__
from .apidoc import document_routes
from .attestation import Notary
from .config import Settings
from .core import Core, build_core
from .drain import Drain
from .errors import InfernetTGIError
from .jobroute import BODY_TIMEOUT, JobRoute
from .jobservice import JobService, Runtime, json_bytes
from .metrics import Metrics
from .relay import Relay
from .resources import ModelSupport, ServedModel, read_resources
from .retry import Sleep
from .upstream.base import Upstream

log = logging.getLogger("infernet_tgi")

JSON = "application/json"
HEALTH = {"message": "Lightweight TGI Client Inference Service"}
SWITCH_INTERVAL = 0.001  # seconds; see the lifespan


def create_app_from_env() -> Quart:
    """The app for the environment of this process (for ASGI servers that import a factory)."""
    return create_app(Settings.from_env(os.environ))


def create_app(
    settings: Settings,
    *,
    sleep: Sleep | None = None,
    upstream: Upstream | None = None,
    drain: Drain | None = None,
    body_timeout: float = BODY_TIMEOUT,
) -> Quart:
    """A ready-to-serve app. `drain` is the worker's shutdown grace period (see `worker`); `sleep`,
    `upstream` and `body_timeout` are for tests (retry waits, a fake backend, a shorter wait for a
    job body that stops arriving)."""
    app = Quart("infernet_tgi")
    drain = drain if drain is not None else Drain(settings.shutdown_grace)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    # OPTIONS gets the JSON 405 (with `Allow`) below instead of Quart's empty text/html 200.
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    metrics = Metrics()
    runtime = Runtime()
    jobs = JobService(settings, metrics, runtime, drain)

    @app.while_serving
    async def lifespan() -> AsyncGenerator[None, None]:
        # The event loop shares the GIL with the job-parse and answer-check threads; a busy thread
        # keeps it for the whole switch interval each time the loop wakes up. 1 ms instead of
        # CPython's 5 ms keeps `GET /` and light jobs fast while hostile schemas are checked.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        core = build_core(settings, metrics=metrics, sleep=sleep, upstream=upstream)
        parsing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="job-parse")
        runtime.core, runtime.parsing = core, parsing
        if settings.attester is not None:
            runtime.notary = Notary(settings.attester, settings.model, core.upstream.info)
            log.info("signing answers as %r", settings.attester)  # the address and chain id, never the key
        try:
            yield
        finally:
            runtime.core = runtime.parsing = runtime.notary = None
            parsing.shutdown(wait=False, cancel_futures=True)
            await core.aclose()

    def core() -> Core:
        if runtime.core is None:
            raise RuntimeError("the app is not serving")
        return runtime.core

    @app.before_request
    async def check_bearer() -> None:
        if request.method in ("GET", "HEAD") and request.path == "/":
            return
        jobs.check_bearer(request.headers.get("Authorization", ""))

    @app.get("/")
    async def health() -> Response:
        return _json(HEALTH)

    @app.post("/service_output")
    async def service_output() -> Response:
        # Served by `JobRoute` in front of Quart; this view documents the route and serves it only
        # under an ASGI root path.
        raw = await request.get_data(as_text=False)
        answer = await jobs.answer(raw if isinstance(raw, bytes) else raw.encode())
        if isinstance(answer, Relay):
            response = Response(answer, content_type="text/plain; charset=utf-8")
            response.timeout = None  # the stream deadline is the limit, not Quart's 60 s
            return response
        return Response(answer, content_type=JSON)

    @app.get("/service-resources")
    async def service_resources() -> Response:
        model = await _served_model(core().upstream)
        wanted = request.args.get("model_id")
        if wanted is not None:
            return _json(ModelSupport(supported=model.serves(wanted)).model_dump())
        document = await asyncio.to_thread(read_resources, __version__, model)  # reads /proc and disks
        resources = document.model_dump()
        if settings.attester is not None:
            resources["attestation"] = settings.attester.describe().model_dump()
        return _json(resources)

    @app.get("/metrics")
    async def metrics_route() -> Response:
        return Response(metrics.render(), content_type=metrics.content_type)

    @app.errorhandler(InfernetTGIError)
    async def our_error(exc: InfernetTGIError) -> Response:
        if exc.status >= 500:
            log.warning("job failed: %s", exc.description)
        return _json(exc.body(), exc.status)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        description = exc.description or exc.name
        headers = {}
        if status == 413:
            description = f"request body is over {settings.max_body_bytes} bytes (TGI_INF_MAX_BODY_BYTES)"
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            allowed = ", ".join(sorted(exc.valid_methods))
            description = f"{request.method} is not served at {request.path}; allowed: {allowed}"
            headers["Allow"] = allowed
        response = _json({"code": str(status), "name": exc.name, "description": description}, status)
        response.headers.update(headers)
        return response

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Response:
        log.exception("unexpected error")
        body = {
            "code": "500",
            "name": "Internal Server Error",
            "description": f"internal error ({type(exc).__name__}); see the container log",
        }
        return _json(body, 500)

    document_routes(app)  # GET /openapi.json and /docs, from the routes above
    # Quart's documented way to put ASGI middleware in front of an app (Quart.asgi_app's docstring).
    app.asgi_app = JobRoute(  # type: ignore[method-assign,assignment]
        app.asgi_app, jobs, max_body=settings.max_body_bytes, body_timeout=body_timeout
    )
    return app


async def _served_model(upstream: Upstream) -> ServedModel:
    """The engine's model, engine name and version from its info route (unknown if it is down)."""
    try:
        async with asyncio.timeout(2.0):
            info = await upstream.info()
    except (InfernetTGIError, TimeoutError):
        return ServedModel()
    return ServedModel.from_info(info, default_engine="tgi")


def _json(value: Any, status: int = 200) -> Response:
    return Response(json_bytes(value), status=status, content_type=JSON)
