"""The core every generation goes through: the configured upstream (with its chat template and answer
checks), the retry policy, and the metrics.

Use `build_core(settings, metrics=...)` once per process (the app's lifespan does, and so does
`TGIClientInferenceWorkflow.setup()` when used on its own), then `generate` / `start_stream`, and
`aclose` at the end. The core owns the process's `HTTPClient` and closes it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable
from typing import Any, TypeVar

from .config import Settings
from .errors import InfernetTGIError, JobError
from .generation import Generation, GenerationRequest, StreamDelta
from .metrics import Metrics
from .retry import RetryPolicy, Sleep
from .upstream.base import Upstream
from .upstream.client import HTTPClient
from .upstream.factory import build_upstream

T = TypeVar("T")


class Core:
    """One upstream under one retry policy, measured by one `Metrics` (or none)."""

    def __init__(
        self,
        upstream: Upstream,
        policy: RetryPolicy,
        *,
        metrics: Metrics | None = None,
        client: HTTPClient | None = None,
    ) -> None:
        self.upstream = upstream
        self.policy = policy
        self._metrics = metrics
        self._client = client

    async def generate(self, request: GenerationRequest, *, deadline: float | None = None) -> Generation:
        """One generation under the retry policy; `deadline` is on `time.monotonic()`."""
        upstream = self.upstream
        return await self.policy.call(
            lambda: self._timed("generate", upstream.generate(request)), deadline=deadline
        )

    async def start_stream(
        self, request: GenerationRequest, *, deadline: float | None = None
    ) -> tuple[StreamDelta, AsyncGenerator[StreamDelta, None]]:
        """Start a stream and wait for its first delta, retrying until then; after the first delta
        errors propagate as they come (there is no way to retry mid-answer). Returns the first delta
        and the rest; close the rest (`contextlib.aclosing`), also when the first one was the last."""
        upstream = self.upstream

        async def attempt() -> tuple[StreamDelta, AsyncGenerator[StreamDelta, None]]:
            events = upstream.stream(request)
            try:
                first = await self._timed("stream", anext(events))
            except BaseException:
                await events.aclose()
                raise
            return first, events

        return await self.policy.call(attempt, deadline=deadline)

    async def info(self) -> dict[str, Any]:
        return await self.upstream.info()

    async def aclose(self) -> None:
        """Stop the upstream's background work and close the HTTP client."""
        try:
            await self.upstream.aclose()
        finally:
            if self._client is not None:
                await self._client.aclose()

    async def _timed(self, kind: str, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await call
        except JobError:
            outcome = ""  # refused before any upstream call: the job's error, not an attempt
            raise
        except InfernetTGIError as exc:
            outcome = str(exc.status)
            raise
        finally:
            if self._metrics is not None and outcome:
                self._metrics.attempt(kind, outcome, time.perf_counter() - started)


def build_core(
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    sleep: Sleep | None = None,
    upstream: Upstream | None = None,
) -> Core:
    """The core for `settings`: its HTTP client, upstream (`upstream` replaces it, for tests) and
    retry policy; `sleep` replaces the retry waits (tests)."""
    client = HTTPClient(
        headers=settings.upstream_headers(),
        cookies=settings.cookies,
        timeout=settings.timeout,
        max_connections=settings.max_connections,
    )
    if upstream is None:
        upstream = build_upstream(settings, client, metrics=metrics)

    def count_retry(exc: InfernetTGIError, wait: float) -> None:
        if metrics is not None:
            metrics.retries.labels(type(exc).__name__).inc()

    policy = RetryPolicy(
        params=settings.retry, sleep=asyncio.sleep if sleep is None else sleep, on_retry=count_retry
    )
    return Core(upstream, policy, metrics=metrics, client=client)

