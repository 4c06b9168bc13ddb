"""`JobService`: one `POST /service_output` job, from the raw request body to the answer.

Use one per app (`create_app` builds it): `check_bearer` with the request's Authorization header, then
`answer(raw)`, which returns the JSON answer's bytes or, for a stream job, the `Relay` that is the body.
Every failure is an `InfernetTGIError` whose `body()` is the error answer. Both ways in call it: the
hot path in front of Quart (`jobroute`) and the Quart view that documents the route.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from . import jsontext, onchain
from .attestation import Notary
from .config import Settings
from .core import Core
from .drain import Drain
from .errors import (
    BadJobError,
    InfernetTGIError,
    ShutdownError,
    UnauthorizedError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)
from .jobs import Job, JobReader
from .metrics import Metrics
from .protocol import MAX_JSON_DEPTH, OffchainResult, OnchainResult, Usage
from .redaction import redact
from .relay import Relay

_UNFINISHED = (
    "the container is shutting down and this job did not finish within the {:g} s grace period "
    "(TGI_INF_SHUTDOWN_GRACE); send it again"
)
# Bodies above this, and any body that may carry a JSON schema or regex, are parsed and validated
# in a worker thread: parsing is linear in the size (bounded by TGI_INF_MAX_BODY_BYTES), but a
# megabyte of brackets takes ~0.2 s of CPU, and checking a schema of a few thousand values ~1 s.
INLINE_PARSE_BYTES = 16 * 1024
# Words whose presence sends a body to the worker thread, as text and as on-chain hex.
_CONSTRAINT_WORDS = tuple(
    form for word in (b"json_format", b"grammar") for form in (word, word.hex().encode())
)


@dataclass
class Runtime:
    """What the app's lifespan opens: set while serving, None otherwise."""

    core: Core | None = None
    # One thread: parsing hostile bodies in parallel threads would take the GIL from the event loop
    # in turn (each for the interpreter's switch interval), slowing every other request.
    parsing: ThreadPoolExecutor | None = None
    notary: Notary | None = None  # set when TGI_INF_ATTESTATION_KEY is


class JobService:
    """Jobs under one app's settings, metrics, lifespan resources and shutdown drain."""

    def __init__(self, settings: Settings, metrics: Metrics, runtime: Runtime, drain: Drain) -> None:
        self._settings = settings
        self._metrics = metrics
        self._runtime = runtime
        self._drain = drain
        self._bearer = None if settings.bearer is None else settings.bearer.encode()
        self._reader = JobReader(settings)

    def check_bearer(self, authorization: str) -> None:
        """Raises `UnauthorizedError` unless the header carries the configured token (if any)."""
        if self._bearer is None:
            return
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._bearer):
            raise UnauthorizedError("missing or wrong bearer token (Authorization: Bearer <token>)")

    def _core(self) -> Core:
        core = self._runtime.core
        if core is None:
            raise RuntimeError("the app is not serving")
        return core

    async def answer(self, raw: bytes) -> bytes | Relay:
        """The answer to the job in `raw`: JSON bytes, or a stream's body (which then owns the
        in-flight count until it is closed)."""
        metrics = self._metrics
        body: Any = None
        metrics.in_flight.inc()
        streaming = False
        try:
            if _parse_inline(raw):
                body = _loads(raw)
                job = self._reader.parse(body)
            else:
                loop = asyncio.get_running_loop()
                parsing = self._runtime.parsing
                body = await loop.run_in_executor(parsing, _loads, raw)
                job = await loop.run_in_executor(parsing, self._reader.parse, body)
            if job.streaming:
                answer: bytes | Relay = await self._stream(job)
                streaming = True
            else:
                answer = await self._generate(job)
        except InfernetTGIError as exc:
            metrics.job_done(*_route(body), str(exc.status))
            raise
        finally:
            if not streaming:
                metrics.in_flight.dec()
        metrics.job_done(job.source, job.destination, "ok")
        return answer

    async def _generate(self, job: Job) -> bytes:
        """The answer's JSON bytes."""
        settings, drain, core = self._settings, self._drain, self._core()
        deadline = time.monotonic() + settings.job_deadline
        try:
            async with drain.limit(settings.job_deadline):
                generation = await core.generate(job.request, deadline=deadline)
        except (RecursionError, TimeoutError) as exc:
            late = (
                f"no answer within the container's {settings.job_deadline:g} s job deadline "
                "(TGI_INF_JOB_DEADLINE; the node gives up at 180 s)"
            )
            raise self._failed_call(exc, core.upstream.url, late) from exc
        if jsontext.has_lone_surrogate(generation.text):
            raise UpstreamProtocolError(
                f"the answer from {redact(core.upstream.url)} holds a lone UTF-16 surrogate, "
                "which cannot be encoded as UTF-8 (nor ABI-encoded); the upstream sent broken text"
            )
        notary = self._runtime.notary
        signed = notary is not None and (job.onchain_output or job.requires_proof)
        raw_output = onchain.encode_text(generation.text) if job.onchain_output or signed else ""
        if job.onchain_output:
            result = OnchainResult(raw_input=job.raw_input, raw_output=raw_output).model_dump()
        else:
            offchain = OffchainResult(
                output=generation.text,
                finish_reason=generation.finish_reason,
                usage=Usage(
                    prompt_tokens=generation.prompt_tokens,
                    completion_tokens=generation.completion_tokens,
                ),
            )
            if not signed:  # the common answer: pydantic writes its JSON (UTF-8, compact) directly
                return offchain.model_dump_json().encode()
            result = offchain.model_dump()
        if signed and notary is not None:
            # Every on-chain answer is signed; off-chain ones when asked (parse_job refuses those
            # without a key). raw_input is what the consumer receives, so it can recompute the hashes.
            result["proof"] = await notary.proof(bytes.fromhex(job.raw_input), bytes.fromhex(raw_output))
            if not job.onchain_output:
                result["attester"] = notary.attester.address
        return json_bytes(result)

    def _failed_call(self, exc: RecursionError | TimeoutError, url: str, late: str) -> Exception:
        """The job error for an upstream call that nested too deeply or ran out of time: `late` when
        its own deadline passed, the shutdown error when the drain's grace did."""
        if isinstance(exc, RecursionError):
            return _too_deep(url)
        if self._drain.expired:
            return ShutdownError(_UNFINISHED.format(self._settings.shutdown_grace))
        return UpstreamTimeoutError(late)

    async def _stream(self, job: Job) -> Relay:
        settings, drain, core = self._settings, self._drain, self._core()
        deadline = time.monotonic() + settings.stream_deadline
        try:
            async with drain.limit(settings.stream_deadline):
                first, rest = await core.start_stream(job.request, deadline=deadline)
        except (RecursionError, TimeoutError) as exc:
            late = f"stream did not start within {settings.stream_deadline:g} s (TGI_INF_STREAM_DEADLINE)"
            raise self._failed_call(exc, core.upstream.url, late) from exc
        loop_deadline = asyncio.get_running_loop().time() + (deadline - time.monotonic())
        done: Callable[[], None] = self._metrics.in_flight.dec
        return Relay(first, rest, loop_deadline, drain, on_close=done)


def json_bytes(value: Any) -> bytes:
    """`value` as a JSON answer body (UTF-8, non-ASCII kept)."""
    # `scrub`: an error description may quote an upstream's message holding a lone surrogate.
    return jsontext.scrub(json.dumps(value, ensure_ascii=False)).encode()


def error_bytes(status: int, name: str, description: str) -> bytes:
    """The Ritual error body for a failure outside the error tree (HTTP-level ones)."""
    return json_bytes({"code": str(status), "name": name, "description": description})


def _too_deep(url: str) -> UpstreamProtocolError:
    # Job JSON is depth-checked before parsing, so only an upstream's answer, parsed by json in the
    # upstream clients, can nest deep enough to exhaust Python's recursion.
    return UpstreamProtocolError(f"the answer from {redact(url)} is JSON nested too deeply to read")


def _parse_inline(raw: bytes) -> bool:
    """Whether `raw` is cheap enough to parse on the event loop (see INLINE_PARSE_BYTES)."""
    if len(raw) > INLINE_PARSE_BYTES:
        return False
    folded = raw.lower()  # hex: any case
    return not any(word in folded for word in _CONSTRAINT_WORDS)


def _loads(raw: bytes) -> Any:
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
