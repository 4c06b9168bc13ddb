"""`TGIClientInferenceWorkflow`: infernet-ml's class, same name and constructor, async inside.

Use it as infernet-ml users do (`setup()`, then `inference()` or `stream()`), or as the container does
(`generate()` / `open_stream()` with a deadline). Differences from the reference, on purpose:
`retry_params` never switches retries off, transport errors are retried, `setup()` does not need the
backend to be up, and one pooled `httpx.AsyncClient` serves every call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict

from .errors import InfernetTGIError
from .metrics import Metrics
from .protocol import GenerationParameters
from .retry import RetryParams, RetryPolicy, Sleep
from .upstream.base import Generation, GenerationRequest, StreamDelta, Upstream
from .upstream.tgi import TGIUpstream
from .upstream.transport import PooledClient


class TgiInferenceRequest(BaseModel):
    """infernet-ml's input type for this workflow: the prompt, plus our optional parameters."""

    model_config = ConfigDict(extra="forbid")

    text: str
    parameters: dict[str, Any] | None = None


class TGIClientInferenceWorkflow:
    """Generations from a TGI server with retries, backoff and jitter."""

    def __init__(
        self,
        server_url: str,
        timeout: float = 30,
        headers: dict[str, str] | None = None,
        cookies: dict[str, str] | None = None,
        retry_params: RetryParams | dict[str, Any] | None = None,
        *,
        http_client: httpx.AsyncClient | None = None,
        upstream: Upstream | None = None,
        metrics: Metrics | None = None,
        sleep: Sleep | None = None,
        **inference_params: Any,
    ) -> None:
        self.server_url = server_url.rstrip("/")
        self.timeout = timeout
        self.headers = dict(headers or {})
        self.cookies = dict(cookies or {})
        params = RetryParams.model_validate(retry_params or {})
        self.defaults = GenerationParameters.model_validate(inference_params).tgi_json()
        self._metrics = metrics
        self._policy = RetryPolicy(
            params=params, sleep=asyncio.sleep if sleep is None else sleep, on_retry=self._count_retry
        )
        self._client = http_client
        self._owns_client = http_client is None
        self._upstream = upstream
        self.is_setup = False

    @property
    def retry_params(self) -> RetryParams:
        return self._policy.params

    async def setup(self) -> None:
        """Open the HTTP client (when none was passed in). Never calls the backend: a backend that
        is down at startup makes jobs fail with 503, not the container crash-loop."""
        if self._client is None:
            self._client = PooledClient(headers=self.headers, cookies=self.cookies, timeout=self.timeout)
        if self._upstream is None:
            self._upstream = TGIUpstream(self._client, self.server_url)
        self.is_setup = True

    async def aclose(self) -> None:
        """Close the HTTP client if this workflow opened it."""
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None
            self._upstream = None
        self.is_setup = False

    @property
    def upstream(self) -> Upstream:
        if self._upstream is None:
            raise RuntimeError("call setup() before using the workflow")
        return self._upstream

    async def inference(self, input_data: TgiInferenceRequest | dict[str, Any] | str) -> str:
        """The generated text, as infernet-ml returns it."""
        if not self.is_setup:
            raise ValueError("setup() must be called before inference()")
        return (await self.generate(self._request(input_data))).text

    async def stream(self, input_data: TgiInferenceRequest | dict[str, Any] | str) -> AsyncIterator[str]:
        """The generated text piece by piece, special tokens left out."""
        async for delta in await self.open_stream(self._request(input_data)):
            if delta.text:
                yield delta.text

    async def generate(self, request: GenerationRequest, *, deadline: float | None = None) -> Generation:
        """One generation under the retry policy; `deadline` is on `time.monotonic()`."""
        upstream = self.upstream
        return await self._policy.call(
            lambda: self._timed("generate", upstream.generate(request)), deadline=deadline
        )

    async def open_stream(
        self, request: GenerationRequest, *, deadline: float | None = None
    ) -> AsyncIterator[StreamDelta]:
        """Start a stream and wait for its first event, retrying until then; after the first
        event errors propagate as they come (there is no way to retry mid-answer)."""
        upstream = self.upstream

        async def attempt() -> tuple[StreamDelta, AsyncIterator[StreamDelta]]:
            events = upstream.stream(request)
            try:
                first = await self._timed("stream", anext(events))
            except BaseException:
                await _aclose(events)
                raise
            return first, events

        first, rest = await self._policy.call(attempt, deadline=deadline)
        return _prepend(first, rest)

    def _request(self, input_data: TgiInferenceRequest | dict[str, Any] | str) -> GenerationRequest:
        if isinstance(input_data, str):
            input_data = TgiInferenceRequest(text=input_data)
        elif isinstance(input_data, dict):
            input_data = TgiInferenceRequest.model_validate(input_data)
        given = GenerationParameters.model_validate(input_data.parameters or {}).tgi_json()
        return GenerationRequest(prompt=input_data.text, parameters={**self.defaults, **given})

    async def _timed(self, kind: str, call: Any) -> Any:
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await call
        except InfernetTGIError as exc:
            outcome = str(exc.status)
            raise
        finally:
            if self._metrics is not None:
                self._metrics.upstream_latency.labels(kind, outcome).observe(time.perf_counter() - started)

    def _count_retry(self, exc: InfernetTGIError, wait: float) -> None:
        if self._metrics is not None:
            self._metrics.retries.labels(type(exc).__name__).inc()


async def _prepend(first: StreamDelta, rest: AsyncIterator[StreamDelta]) -> AsyncIterator[StreamDelta]:
    try:
        yield first
        if first.finish_reason is None:
            async for delta in rest:
                yield delta
    finally:
        await _aclose(rest)


async def _aclose(events: AsyncIterator[StreamDelta]) -> None:
    close: Callable[[], Any] | None = getattr(events, "aclose", None)
    if close is not None:
        await close()
