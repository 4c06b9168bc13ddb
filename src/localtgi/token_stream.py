"""One streamed request: permit, validation and engine stream, as an async generator of tokens.

Use `Inference.stream(...)` to get a `TokenStream`; nothing happens until it is iterated.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import TYPE_CHECKING

from localtgi.engine_types import FinishEvent, TokenEvent
from localtgi.errors import IncompleteGenerationError
from localtgi.metrics import Clock
from localtgi.protocol import GenerateParameters
from localtgi.validation import ValidRequest

if TYPE_CHECKING:
    from localtgi.engine import GenerationStream
    from localtgi.inference import Inference


class TokenStream:
    """Validated request + engine stream. Iterate `events()` for TokenEvents (the last one carries its
    FinishEvent); LocalTGIError is raised from the iteration (overload, validation, generation).
    Closing it (or the task being cancelled) cancels the generation and frees the permit at once."""

    def __init__(
        self,
        inference: Inference,
        inputs: str,
        parameters: GenerateParameters,
        add_special_tokens: bool,
        return_full_text_default: bool,
    ) -> None:
        self._inference = inference
        self._inputs = inputs
        self._parameters = parameters
        self._add_special_tokens = add_special_tokens
        self._return_full_text_default = return_full_text_default
        self.request: ValidRequest | None = None
        self.clock = Clock()

    async def events(self) -> AsyncGenerator[TokenEvent, None]:
        inference = self._inference
        inference.metrics.request()
        permit = None
        stream: GenerationStream | None = None
        finished = False
        try:
            permit = inference.permits.acquire()
            self.request = await inference.validate(
                self._inputs,
                self._parameters,
                add_special_tokens=self._add_special_tokens,
                return_full_text_default=self._return_full_text_default,
            )
            self.clock.validated = time.perf_counter()
            grammar = self.request.params.grammar
            matcher = None if grammar is None else await inference.engine.grammar_matcher(grammar)
            stream = inference.engine.submit(self.request.input_ids, self.request.params, matcher)
            async for event in stream:
                if self.clock.first_token is None:
                    self.clock.first_token = time.perf_counter()
                if event.finish is not None:
                    finished = True
                    timings = self.clock.timings()
                    inference.metrics.success(
                        timings, event.finish.generated_tokens, self.request.input_length
                    )
                yield event
            if not finished:
                raise IncompleteGenerationError("Incomplete generation stream")
        except Exception as exc:
            error = inference.failed(exc)
            if error is exc:
                raise
            raise error from exc
        finally:
            # Runs on normal end, on errors, and when the client goes away (task cancelled or the
            # generator closed): the engine drops the request and the permit comes back now.
            if stream is not None:
                if not finished:
                    stream.cancel()
                await stream.aclose()
            if permit is not None:
                permit.release()

    async def tokens(self) -> AsyncGenerator[tuple[TokenEvent, FinishEvent | None], None]:
        """Each token with its FinishEvent (None but on the last one), as the SSE layers want them."""
        async with aclosing(self.events()) as events:
            async for event in events:
                yield event, event.finish
