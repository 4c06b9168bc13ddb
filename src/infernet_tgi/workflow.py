"""`TGIClientInferenceWorkflow`: infernet-ml's class, same name and constructor, async inside.

Use it as infernet-ml users do (`setup()`, then `inference()` or `stream()`, and `aclose()` at the end).
It runs on the same core as the container (`core.build_core`: chat template, constraint checks, retry
policy, the engine kinds of `TGI_INF_UPSTREAM_KIND`), built from its constructor arguments. Differences
from the reference, on purpose: `retry_params` never switches retries off, transport errors are
retried, and `setup()` does not need the backend to be up.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from pydantic import BaseModel, ConfigDict

from .config import Settings
from .core import Core, build_core
from .generation import GenerationRequest
from .protocol import GenerationParameters
from .retry import RetryParams, Sleep


class TgiInferenceRequest(BaseModel):
    """infernet-ml's input type for this workflow: the prompt, plus our optional parameters."""

    model_config = ConfigDict(extra="forbid")

    text: str
    parameters: dict[str, Any] | None = None


class TGIClientInferenceWorkflow:
    """Generations from a TGI server with retries, backoff and jitter.

    `settings` (keyword only, ours) selects another engine kind, pool or chat template the way the
    container's environment does; its URL, timeout, headers, cookies, retry and defaults are replaced
    by the constructor's. `sleep` replaces the retry waits (tests)."""

    def __init__(
        self,
        server_url: str,
        timeout: float = 30,
        headers: dict[str, str] | None = None,
        cookies: dict[str, str] | None = None,
        retry_params: RetryParams | dict[str, Any] | None = None,
        *,
        settings: Settings | None = None,
        sleep: Sleep | None = None,
        **inference_params: Any,
    ) -> None:
        self.server_url = server_url.rstrip("/")
        self.timeout = timeout
        self.headers = dict(headers or {})
        self.cookies = dict(cookies or {})
        self.retry_params = RetryParams.model_validate(retry_params or {})
        defaults = GenerationParameters.model_validate(inference_params)
        self.defaults = defaults.tgi_json()
        self._settings = dataclasses.replace(
            settings or Settings(),
            server_url=self.server_url,
            timeout=float(timeout),
            headers=self.headers,
            cookies=self.cookies,
            retry=self.retry_params,
            defaults=defaults,
        )
        self._sleep = sleep
        self._core: Core | None = None
        self.is_setup = False

    async def setup(self) -> None:
        """Build the core. Never calls the backend: a backend that is down at startup makes calls
        fail with `UpstreamUnavailableError`, not the process crash-loop."""
        if self._core is None:
            self._core = build_core(self._settings, sleep=self._sleep)
        self.is_setup = True

    async def aclose(self) -> None:
        """Close the core and its HTTP client."""
        core, self._core = self._core, None
        self.is_setup = False
        if core is not None:
            await core.aclose()

    @property
    def core(self) -> Core:
        if self._core is None:
            raise RuntimeError("call setup() before using the workflow")
        return self._core

    async def inference(self, input_data: TgiInferenceRequest | dict[str, Any] | str) -> str:
        """The generated text, as infernet-ml returns it."""
        if not self.is_setup:
            raise ValueError("setup() must be called before inference()")
        return (await self.core.generate(self._request(input_data))).text

    async def stream(
        self, input_data: TgiInferenceRequest | dict[str, Any] | str
    ) -> AsyncGenerator[str, None]:
        """The generated text piece by piece, special tokens left out."""
        if not self.is_setup:
            raise ValueError("setup() must be called before stream()")
        first, rest = await self.core.start_stream(self._request(input_data))
        async with aclosing(rest):
            if first.text:
                yield first.text
            if first.finish_reason is None:
                async for delta in rest:
                    if delta.text:
                        yield delta.text

    def _request(self, input_data: TgiInferenceRequest | dict[str, Any] | str) -> GenerationRequest:
        if isinstance(input_data, str):
            input_data = TgiInferenceRequest(text=input_data)
        elif isinstance(input_data, dict):
            input_data = TgiInferenceRequest.model_validate(input_data)
        given = GenerationParameters.model_validate(input_data.parameters or {}).tgi_json()
        return GenerationRequest(prompt=input_data.text, parameters={**self.defaults, **given})
