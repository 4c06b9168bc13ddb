"""Inference: one request's trip through permits, validation and the engine (TGI's `Infer`).

Use one `Inference` per app. Routes call `generate` for a whole answer (best_of included) or
`open_stream` + iteration for token streams. Permits are taken before validation, as TGI does, so a full
server answers 429 before it looks at the body; a stream holds its permit until it is closed.
Tokenization runs in a worker thread; the engine runs the model in its own thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Coroutine, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from localtgi.engine_types import FinishEvent, PrefillToken, TokenEvent
from localtgi.errors import (
    GenerationError,
    IncompleteGenerationError,
    LocalTGIError,
    OverloadedError,
)
from localtgi.metrics import Metrics, Timings
from localtgi.protocol import GenerateParameters
from localtgi.validation import Validator, ValidRequest, check_best_of

if TYPE_CHECKING:
    from localtgi.engine import Engine, GenerationStream

log = logging.getLogger(__name__)
T = TypeVar("T")


class Permits:
    """TGI's `--max-concurrent-requests` semaphore: taken without waiting, or OverloadedError."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.taken = 0

    def acquire(self, n: int = 1) -> Permit:
        if self.taken + n > self.total:
            raise OverloadedError()
        self.taken += n
        return Permit(self, n)


class Permit:
    def __init__(self, permits: Permits, n: int) -> None:
        self._permits = permits
        self._n = n

    def release(self) -> None:
        """Give the permits back; safe to call more than once."""
        self._permits.taken -= self._n
        self._n = 0


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


@dataclass
class Clock:
    """Marks the phases of one request for x-* headers and histograms."""

    start: float = field(default_factory=time.perf_counter)
    validated: float | None = None
    first_token: float | None = None

    def timings(self) -> Timings:
        end = time.perf_counter()
        validated = self.validated or self.start
        first = self.first_token or end
        return Timings(
            total=end - self.start,
            validation=validated - self.start,
            queue=first - validated,
            inference=end - first,
        )


def error_label(exc: LocalTGIError) -> str:
    """TGI's `err` label on tgi_request_failure for this error."""
    return {
        "validation": "validation",
        "overloaded": "overloaded",
        "incomplete_generation": "incomplete",
        "template_error": "template",
    }.get(exc.error_type, exc.error_type)


def _foreign(exc: Exception) -> LocalTGIError:
    if isinstance(exc, LocalTGIError):
        return exc
    log.exception("engine failure", exc_info=exc)
    return GenerationError(f"{type(exc).__name__}: {exc}")


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
        except LocalTGIError as exc:
            self.metrics.failure(error_label(exc))
            raise
        except Exception as exc:
            error = _foreign(exc)
            self.metrics.failure(error_label(error))
            raise error from exc
        # best_of: the sequence with the highest summed logprob wins (TGI's rule).
        ranked = sorted(sequences, key=lambda s: s.logprob, reverse=True)
        timings = clock.timings()
        self.metrics.success(timings, ranked[0].finish.generated_tokens, request.input_length)
        return Outcome(request, ranked[0], ranked[1:], prefill, timings)

    async def _collect(self, request: ValidRequest, clock: Clock) -> Generated:
        tokens: list[TokenEvent] = []
        finish: FinishEvent | None = None
        stream = self.engine.submit(request.input_ids, request.params)
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
            stream = inference.engine.submit(self.request.input_ids, self.request.params)
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
        except LocalTGIError as exc:
            inference.metrics.failure(error_label(exc))
            raise
        except Exception as exc:
            error = _foreign(exc)
            inference.metrics.failure(error_label(error))
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


def prompt_chars(inputs: Sequence[str] | str) -> int:
    """x-compute-characters: Unicode scalar count of the prompt(s)."""
    if isinstance(inputs, str):
        return len(inputs)
    return sum(len(s) for s in inputs)
