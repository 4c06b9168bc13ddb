"""The outermost upstream layer: chat templates in, constraint checks out.

Use `Guard` around the configured upstream (the factory does). Before a call, a chat job's messages
become a prompt when a chat template is configured (`TGI_INF_CHAT_TEMPLATE`), so that the upstream's
prompt route serves it. After a call, an answer under a constraint is checked: not in the
`response_pool`, not JSON, or not matching the schema is a `ConstraintViolationError`, never
unconstrained text. A constrained stream is held back and sent whole once checked, because a stream
cannot take back text it has already sent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from typing import Any

from ..chat import ChatTemplate
from ..constraints import Constraint, constraint_of, verify
from .base import Generation, GenerationRequest, StreamDelta, Upstream
from .http import redact


class Guard:
    """Wraps `inner`; see the module docstring."""

    def __init__(self, inner: Upstream, *, template: ChatTemplate | None = None) -> None:
        self.inner = inner
        self._template = template
        # Answer checks (JSON schema, RE2) run here, one at a time, off the event loop.
        self._checks = ThreadPoolExecutor(max_workers=1, thread_name_prefix="answer-check")

    @property
    def url(self) -> str:
        return self.inner.url

    def _prepared(self, request: GenerationRequest) -> GenerationRequest:
        if request.messages is None or self._template is None:
            return request
        prompt = self._template.render(request.messages)
        return dataclasses.replace(request, prompt=prompt, messages=None)

    async def generate(self, request: GenerationRequest) -> Generation:
        request = self._prepared(request)
        generation = await self.inner.generate(request)
        constraint = constraint_of(request)
        if constraint is None:
            return generation
        text = await verify(
            constraint,
            generation.text,
            finish_reason=generation.finish_reason,
            where=redact(self.inner.url),
            executor=self._checks,
        )
        return dataclasses.replace(generation, text=text)

    def stream(self, request: GenerationRequest) -> AsyncGenerator[StreamDelta, None]:
        request = self._prepared(request)
        constraint = constraint_of(request)
        if constraint is None:
            return self.inner.stream(request)  # nothing to check: no layer of ours per delta
        return self._checked(request, constraint)

    async def _checked(
        self, request: GenerationRequest, constraint: Constraint
    ) -> AsyncGenerator[StreamDelta, None]:
        pieces: list[str] = []
        last = StreamDelta(text="")
        async with aclosing(self.inner.stream(request)) as events:
            async for delta in events:
                pieces.append(delta.text)
                last = delta
        text = await verify(
            constraint,
            "".join(pieces),
            finish_reason=last.finish_reason,
            where=redact(self.inner.url),
            executor=self._checks,
        )
        yield last._replace(text=text)

    async def info(self) -> dict[str, Any]:
        return await self.inner.info()

    async def health(self) -> None:
        await self.inner.health()

    async def aclose(self) -> None:
        self._checks.shutdown(wait=False, cancel_futures=True)
        await self.inner.aclose()
