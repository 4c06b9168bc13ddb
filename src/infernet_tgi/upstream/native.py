"""TGI's native protocol with its Messages API beside it: the default upstream kind.

Use `NativeTGI` for Hugging Face TGI and localtgi (and, with other paths, DataCrunch). Prompt jobs go
to `/generate` / `/generate_stream` through `TGIUpstream`, with a constraint sent as TGI's `grammar`.
Chat jobs are rendered with the model's own template by `/chat_tokenize` and go to `/generate` too, so
every TGI parameter works for them; a TGI without that route gets them on `/v1/chat/completions`
(translated by `OpenAIUpstream` in its `tgi` dialect). A server without a chat route (DataCrunch)
refuses them with a clear error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any

from ..constraints import constraint_of, tgi_grammar
from ..errors import UnsupportedRequestError
from .base import Generation, GenerationRequest, StreamDelta
from .client import HTTPClient
from .http import redact, status_error
from .openai import OpenAIUpstream
from .tgi import TGIUpstream


class NativeTGI:
    """A TGI-protocol server at `url`: `/generate` for prompts, the Messages API for chats."""

    def __init__(
        self,
        client: HTTPClient,
        url: str,
        *,
        generate_path: str = "/generate",
        stream_path: str = "/generate_stream",
        extra_body: dict[str, Any] | None = None,
        chat_route: bool = True,
        api_key: str | None = None,
        health_path: str | None = "/health",
    ) -> None:
        self._client = client
        self._tgi = TGIUpstream(
            client, url, generate_path=generate_path, stream_path=stream_path, extra_body=extra_body
        )
        self._chat = (
            OpenAIUpstream(client, url.rstrip("/") + "/v1", api_key=api_key, flavor="tgi")
            if chat_route
            else None
        )
        self._health = None if health_path is None else url.rstrip("/") + health_path

    @property
    def url(self) -> str:
        return self._tgi.url

    def _native(self, request: GenerationRequest) -> GenerationRequest:
        if request.messages is not None:
            raise UnsupportedRequestError(
                f"{redact(self.url)} has no chat route: chat jobs need TGI_INF_CHAT_TEMPLATE "
                "(e.g. chatml, llama3) so that messages become a prompt"
            )
        constraint = constraint_of(request)
        if constraint is None:
            return request
        parameters = {**request.parameters, "grammar": tgi_grammar(constraint)}
        return dataclasses.replace(request, parameters=parameters)

    async def _templated(self, request: GenerationRequest) -> GenerationRequest | None:
        """A chat job as a prompt job for `/generate` (None: use the Messages API instead)."""
        if request.messages is None or self._chat is None:
            return request
        prompt = await self._tgi.chat_prompt(request.messages)
        if prompt is None:
            _refuse_generate_only(request.parameters, self.url)
            return None
        return dataclasses.replace(request, prompt=prompt, messages=None)

    async def generate(self, request: GenerationRequest) -> Generation:
        native = await self._templated(request)
        if native is None and self._chat is not None:
            return await self._chat.generate(request)
        return await self._tgi.generate(self._native(native or request))

    def stream(self, request: GenerationRequest) -> AsyncGenerator[StreamDelta, None]:
        if request.messages is None or self._chat is None:
            # a prompt job: TGI's stream itself, no layer of ours per delta (a refusal raises here)
            return self._tgi.stream(self._native(request))
        return self._chat_stream(request)

    async def _chat_stream(self, request: GenerationRequest) -> AsyncGenerator[StreamDelta, None]:
        native = await self._templated(request)
        if native is None and self._chat is not None:
            events = self._chat.stream(request)
        else:
            events = self._tgi.stream(self._native(native or request))
        async with aclosing(events):
            async for delta in events:
                yield delta

    async def info(self) -> dict[str, Any]:
        return await self._tgi.info()

    async def health(self) -> None:
        """Raises unless `GET /health` answers 200 (falls back to `/info` without a health path)."""
        if self._health is None:
            await self._tgi.info()
            return
        response = await self._client.get(self._health)
        if response.status != 200:
            raise status_error(response.status, response.body, self._health)

    async def aclose(self) -> None:
        """Nothing runs in the background here."""


# TGI parameters its Messages API does not take (value: when a setting of it matters).
_GENERATE_ONLY: dict[str, Callable[[Any], bool]] = {
    "top_k": lambda v: v is not None,
    "truncate": lambda v: v is not None,
    "typical_p": lambda v: v is not None,
    "watermark": lambda v: bool(v),
    "best_of": lambda v: v is not None and v > 1,
    "return_full_text": lambda v: bool(v),
}


def _refuse_generate_only(parameters: dict[str, Any], url: str) -> None:
    for name, matters in _GENERATE_ONLY.items():
        if matters(parameters.get(name)):
            raise UnsupportedRequestError(
                f"`{name}` needs TGI's /generate, but {redact(url)} cannot render chats for it (no "
                "/chat_tokenize: TGI older than 2.2, or a model without a fast tokenizer); set "
                "TGI_INF_CHAT_TEMPLATE to the model's template, or leave `{name}` out"
            )
