"""Inference: one request's trip through permits, validation and the engine (TGI's `Infer`).

Use one `Inference` per app. Routes call `generate` for a whole answer (best_of included) or
`stream` for a `token_stream.TokenStream`. Permits are taken before validation, as TGI does, so a full
server answers 429 before it looks at the body; a stream holds its permit until it is closed.
Tokenization runs in a worker thread; the engine runs the model in its own thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from localtgi.engine_types import FinishEvent, PrefillToken, TokenEvent
from localtgi.errors import IncompleteGenerationError, LocalTGIError, translate
from localtgi.metrics import Clock, Metrics, Timings, error_label
from localtgi.permits import Permits
from localtgi.protocol import GenerateParameters
from localtgi.token_stream import TokenStream
from localtgi.validation import Validator, ValidRequest, check_best_of

if TYPE_CHECKING:
    from localtgi.engine import Engine

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Generated:
    """One finished generation."""

    tokens: list[TokenEvent]
    finish: FinishEvent

    @property
    def logprob(self) -> float:
        return sum(t.logprob for t in self.tokens)


@dataclass
class Outcome:
    """The result of a non-streaming request: the best sequence, the others (best_of), prefill."""

    request: ValidRequest
    best: Generated
    others: list[Generated]
    prefill: list[PrefillToken]
    timings: Timings


async def gather_all(coros: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Run `coros` in a TaskGroup: when one fails the others are cancelled (and their engine rows
    dropped, permits released by their own cleanup) before the first error is raised."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(c) for c in coros]
    except BaseExceptionGroup as exc:
        first = exc.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    return [task.result() for task in tasks]


class Inference:
    """Runs validated requests on the engine under the concurrency limit."""

    def __init__(
        self,
        engine: Engine,
        validator: Validator,
        permits: Permits,
        metrics: Metrics,
        eos_token_ids: frozenset[int],
    ) -> None:
        self.eos_token_ids = eos_token_ids
        self.engine = engine
        self.validator = validator
        self.permits = permits
        self.metrics = metrics

    async def validate(
        self,
        inputs: str,
        parameters: GenerateParameters,
        *,
        add_special_tokens: bool = True,
        return_full_text_default: bool = False,
    ) -> ValidRequest:
        return await asyncio.to_thread(
            self.validator.validate,
            inputs,
            parameters,
            add_special_tokens=add_special_tokens,
            return_full_text_default=return_full_text_default,
        )

    async def generate(
        self,
        inputs: str,
        parameters: GenerateParameters,
        *,
        add_special_tokens: bool = True,
        return_full_text_default: bool = False,
    ) -> Outcome:
        """Generate a whole answer. Raises LocalTGIError subclasses; counts metrics."""
        self.metrics.request()
        clock = Clock()
        try:
            best_of = check_best_of(parameters.best_of, self.validator.limits)
            permit = self.permits.acquire(best_of)
            try:
                request = await self.validate(
                    inputs,
                    parameters,
                    add_special_tokens=add_special_tokens,
                    return_full_text_default=return_full_text_default,
                )
                clock.validated = time.perf_counter()
                sequences = await gather_all([self._collect(request, clock) for _ in range(best_of)])
                prefill: list[PrefillToken] = []
                if request.decoder_input_details:
                    prefill = await self.engine.prefill(request.input_ids)
            finally:
                permit.release()
        except IncompleteGenerationError as exc:
            self.metrics.failure(error_label(exc))
            # The engine says "... stream" for every unfinished request; TGI's non-stream text differs.
            raise IncompleteGenerationError("Incomplete generation") from exc
        except Exception as exc:
            error = self.failed(exc)
            if error is exc:
                raise
            raise error from exc
        # best_of: the sequence with the highest summed logprob wins (TGI's rule).
        ranked = sorted(sequences, key=lambda s: s.logprob, reverse=True)
        timings = clock.timings()
        self.metrics.success(timings, ranked[0].finish.generated_tokens, request.input_length)
        return Outcome(request, ranked[0], ranked[1:], prefill, timings)

    def failed(self, exc: Exception) -> LocalTGIError:
        """Count a request that ended with `exc` and return it as our error (translated when foreign)."""
        error = translate(exc)
        self.metrics.failure(error_label(error))
        return error

    async def _collect(self, request: ValidRequest, clock: Clock) -> Generated:
        tokens: list[TokenEvent] = []
        finish: FinishEvent | None = None
        grammar = request.params.grammar
        matcher = None if grammar is None else await self.engine.grammar_matcher(grammar)
        stream = self.engine.submit(request.input_ids, request.params, matcher)
        try:
            async for event in stream:
                if clock.first_token is None:
                    clock.first_token = time.perf_counter()
                tokens.append(event)
                finish = event.finish
        finally:
            if finish is None:
                stream.cancel()
            await stream.aclose()
        if finish is None:
            raise IncompleteGenerationError("Incomplete generation")
        return Generated(tokens, finish)

    def stream(
        self,
        inputs: str,
        parameters: GenerateParameters,
        *,
        add_special_tokens: bool = True,
        return_full_text_default: bool = False,
    ) -> TokenStream:
        """A token stream; nothing happens (no permit, no validation) until it is iterated."""
        return TokenStream(self, inputs, parameters, add_special_tokens, return_full_text_default)
