"""The Quart app an Infernet node calls: `POST /service_output` and its neighbours.

Use `create_app(settings)` and serve it with uvicorn (see `server` and `worker`). The app's lifespan
builds the process's one `Core` (HTTP client, upstream, retries, metrics) and closes it at shutdown.
Every failure leaves as the Ritual JSON error body with the real cause; every success is JSON, except
stream jobs, which get raw UTF-8 text chunks.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import sys
import time
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from . import __version__, jsontext, onchain
from .apidoc import document_routes
from .attestation import Notary
from .config import Settings
from .core import Core, build_core
from .drain import Drain
from .errors import (
    BadJobError,
    InfernetTGIError,
    ShutdownError,
    UnauthorizedError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)
from .jobs import Job, parse_job
from .metrics import Metrics
from .protocol import MAX_JSON_DEPTH, OffchainResult, OnchainResult, Usage
from .redaction import redact
from .relay import Relay
from .resources import ModelSupport, ServedModel, read_resources
from .retry import Sleep
from .upstream.base import Upstream

log = logging.getLogger("infernet_tgi")

JSON = "application/json"
_UNFINISHED = (
    "the container is shutting down and this job did not finish within the {:g} s grace period "
    "(TGI_INF_SHUTDOWN_GRACE); send it again"
)
HEALTH = {"message": "Lightweight TGI Client Inference Service"}
# Bodies above this, and any body that may carry a JSON schema or regex, are parsed and validated
# in a worker thread: parsing is linear in the size (bounded by TGI_INF_MAX_BODY_BYTES), but a
# megabyte of brackets takes ~0.2 s of CPU, and checking a schema of a few thousand values ~1 s.
INLINE_PARSE_BYTES = 16 * 1024
SWITCH_INTERVAL = 0.001  # seconds; see the lifespan
# Words whose presence sends a body to the worker thread, as text and as on-chain hex.
_CONSTRAINT_WORDS = tuple(
    form for word in (b"json_format", b"grammar") for form in (word, word.hex().encode())
)


@dataclass
class _Runtime:
    """What the lifespan opens: set while serving, None otherwise."""

    core: Core | None = None
    # One thread: parsing hostile bodies in parallel threads would take the GIL from the event loop
    # in turn (each for the interpreter's 5 ms switch interval), slowing every other request.
    parsing: ThreadPoolExecutor | None = None
    notary: Notary | None = None  # set when TGI_INF_ATTESTATION_KEY is


def create_app_from_env() -> Quart:
    """The app for the environment of this process (for ASGI servers that import a factory)."""
    return create_app(Settings.from_env(os.environ))


def create_app(
    settings: Settings,
    *,
    sleep: Sleep | None = None,
    upstream: Upstream | None = None,
    drain: Drain | None = None,
) -> Quart:
    """A ready-to-serve app. `drain` is the worker's shutdown grace period (see `worker`); `sleep` and
    `upstream` are for tests (retry waits, a fake backend)."""
    app = Quart("infernet_tgi")
    drain = drain if drain is not None else Drain(settings.shutdown_grace)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    # OPTIONS gets the JSON 405 (with `Allow`) below instead of Quart's empty text/html 200.
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    metrics = Metrics()
    runtime = _Runtime()

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
        if settings.bearer is None or (request.method in ("GET", "HEAD") and request.path == "/"):
            return
        given = request.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), settings.bearer.encode()
        ):
            raise UnauthorizedError("missing or wrong bearer token (Authorization: Bearer <token>)")

    @app.get("/")
    async def health() -> Response:
        return _json(HEALTH)

    @app.post("/service_output")
    async def service_output() -> Response:
        body: Any = None
        metrics.in_flight.inc()
        streaming = False
        try:
            raw = await request.get_data(as_text=False)
            if _parse_inline(raw):
                body = _loads(raw)
                job = parse_job(body, settings)
            else:
                loop = asyncio.get_running_loop()
                body = await loop.run_in_executor(runtime.parsing, _loads, raw)
                job = await loop.run_in_executor(runtime.parsing, parse_job, body, settings)
            if job.streaming:
                response = await _stream(job)
                streaming = True  # the stream's body now owns the in-flight count
            else:
                response = _json(await _answer(job))
        except InfernetTGIError as exc:
            metrics.job_done(*_route(body), str(exc.status))
            raise
        finally:
            if not streaming:
                metrics.in_flight.dec()
        metrics.job_done(job.source, job.destination, "ok")
        return response

    async def _answer(job: Job) -> dict[str, Any]:
        deadline = time.monotonic() + settings.job_deadline
        try:
            async with drain.limit(settings.job_deadline):
                generation = await core().generate(job.request, deadline=deadline)
        except RecursionError as exc:
            raise _too_deep(core().upstream.url) from exc
        except TimeoutError as exc:
            if drain.expired:
                raise ShutdownError(_UNFINISHED.format(settings.shutdown_grace)) from exc
            raise UpstreamTimeoutError(
                f"no answer within the container's {settings.job_deadline:g} s job deadline "
                "(TGI_INF_JOB_DEADLINE; the node gives up at 180 s)"
            ) from exc
        if jsontext.has_lone_surrogate(generation.text):
            raise UpstreamProtocolError(
                f"the answer from {redact(core().upstream.url)} holds a lone UTF-16 surrogate, "
                "which cannot be encoded as UTF-8 (nor ABI-encoded); the upstream sent broken text"
            )
        signed = runtime.notary is not None and (job.onchain_output or job.requires_proof)
        raw_output = onchain.encode_text(generation.text) if job.onchain_output or signed else ""
        if job.onchain_output:
            result = OnchainResult(raw_input=job.raw_input, raw_output=raw_output).model_dump()
        else:
            result = OffchainResult(
                output=generation.text,
                finish_reason=generation.finish_reason,
                usage=Usage(
                    prompt_tokens=generation.prompt_tokens,
                    completion_tokens=generation.completion_tokens,
                ),
            ).model_dump()
        notary = runtime.notary
        if signed and notary is not None:
            # Every on-chain answer is signed; off-chain ones when asked (parse_job refuses those
            # without a key). raw_input is what the consumer receives, so it can recompute the hashes.
            result["proof"] = await notary.proof(bytes.fromhex(job.raw_input), bytes.fromhex(raw_output))
            if not job.onchain_output:
                result["attester"] = notary.attester.address
        return result

    async def _stream(job: Job) -> Response:
        deadline = time.monotonic() + settings.stream_deadline
        try:
            async with drain.limit(settings.stream_deadline):
                first, rest = await core().start_stream(job.request, deadline=deadline)
        except RecursionError as exc:
            raise _too_deep(core().upstream.url) from exc
        except TimeoutError as exc:
            if drain.expired:
                raise ShutdownError(_UNFINISHED.format(settings.shutdown_grace)) from exc
            raise UpstreamTimeoutError(
                f"stream did not start within {settings.stream_deadline:g} s (TGI_INF_STREAM_DEADLINE)"
            ) from exc
        loop_deadline = asyncio.get_running_loop().time() + (deadline - time.monotonic())
        text = Relay(first, rest, loop_deadline, drain, on_close=metrics.in_flight.dec)
        response = Response(text, content_type="text/plain; charset=utf-8")
        response.timeout = None  # the stream deadline above is the limit, not Quart's 60 s
        return response

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
    return app


async def _served_model(upstream: Upstream) -> ServedModel:
    """The engine's model, engine name and version from its info route (unknown if it is down)."""
    try:
        async with asyncio.timeout(2.0):
            info = await upstream.info()
    except (InfernetTGIError, TimeoutError):
        return ServedModel()
    return ServedModel.from_info(info, default_engine="tgi")


def _too_deep(url: str) -> UpstreamProtocolError:
    # Job JSON is depth-checked before parsing, so only an upstream's answer, parsed by json in the
    # upstream clients, can nest deep enough to exhaust Python's recursion.
    return UpstreamProtocolError(f"the answer from {redact(url)} is JSON nested too deeply to read")


def _parse_inline(raw: str | bytes) -> bool:
    """Whether `raw` is cheap enough to parse on the event loop (see INLINE_PARSE_BYTES)."""
    if len(raw) > INLINE_PARSE_BYTES:
        return False
    folded = (raw if isinstance(raw, bytes) else raw.encode(errors="replace")).lower()  # hex: any case
    return not any(word in folded for word in _CONSTRAINT_WORDS)


def _loads(raw: str | bytes) -> Any:
    try:
        return jsontext.loads(raw, max_depth=MAX_JSON_DEPTH)
    except json.JSONDecodeError as exc:
        raise BadJobError(f"request body is not valid JSON: {exc}") from exc
    except ValueError as exc:  # too deep, not UTF-8, a lone surrogate, an integer of 4,300+ digits
        raise BadJobError(f"request body refused: {exc}") from exc


def _route(body: Any) -> tuple[int | None, int | None]:
    if isinstance(body, dict):
        source, destination = body.get("source"), body.get("destination")
        return (
            source if isinstance(source, int) else None,
            destination if isinstance(destination, int) else None,
        )
    return None, None


def _json(value: Any, status: int = 200) -> Response:
    # `scrub`: an error description may quote an upstream's message holding a lone surrogate.
    return Response(jsontext.scrub(json.dumps(value, ensure_ascii=False)), status=status, content_type=JSON)
