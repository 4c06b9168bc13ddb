"""Retry with backoff and jitter, as documented for `retry_params`.

Use `RetryPolicy.call` around one upstream attempt. Only errors whose `retryable` flag is set are tried
again; everything else (validation errors above all) is raised at once. The wait sequence follows the
documented algorithm (retry2 0.9.5): wait `delay`, then `delay = delay * backoff + jitter`, capped at
`max_delay`; no wait after the last attempt. Sleep, randomness and the clock are injectable so tests can
assert the exact waits.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import InfernetTGIError

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]
Uniform = Callable[[float, float], float]


class RetryParams(BaseModel):
    """The `retry_params` object of `TGI_INF_WORKFLOW_KW_ARGS`, with the documented defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tries: int = Field(default=3, ge=1)
    delay: float = Field(default=3.0, ge=0)
    max_delay: float | None = Field(default=None, ge=0)
    backoff: float = Field(default=2.0, ge=0)
    jitter: float | tuple[float, float] = (0.5, 1.5)

    @field_validator("jitter")
    @classmethod
    def _ordered(cls, value: float | tuple[float, float]) -> float | tuple[float, float]:
        if isinstance(value, tuple) and value[0] > value[1]:
            raise ValueError("jitter pair must be [low, high] with low <= high")
        return value


def waits(params: RetryParams, uniform: Uniform = random.uniform) -> Iterator[float]:
    """The waits between attempts: `tries - 1` values, computed lazily so jitter is drawn in order."""
    delay = params.delay
    for _ in range(params.tries - 1):
        yield delay
        delay = delay * params.backoff
        if isinstance(params.jitter, tuple):
            delay += uniform(*params.jitter)
        else:
            delay += params.jitter
        if params.max_delay is not None:
            delay = min(delay, params.max_delay)


@dataclass(frozen=True)
class RetryPolicy:
    """Runs an async attempt until it succeeds, fails for good, or the tries or deadline run out."""

    params: RetryParams = field(default_factory=RetryParams)
    sleep: Sleep = asyncio.sleep
    uniform: Uniform = random.uniform
    clock: Callable[[], float] = time.monotonic
    on_retry: Callable[[InfernetTGIError, float], None] | None = None

    async def call(self, attempt: Callable[[], Awaitable[T]], *, deadline: float | None = None) -> T:
        """Await `attempt()` under the policy. `deadline` (on `clock`) stops retrying early: a wait
        that would end past it is not taken, and the last error is raised instead."""
        schedule = waits(self.params, self.uniform)
        tried = 0
        while True:
            tried += 1
            try:
                return await attempt()
            except InfernetTGIError as exc:
                if not exc.retryable:
                    raise
                wait = next(schedule, None)
                if wait is None or (deadline is not None and self.clock() + wait > deadline):
                    raise _exhausted(exc, tried) from exc
                if self.on_retry is not None:
                    self.on_retry(exc, wait)
                await self.sleep(wait)


def _exhausted(exc: InfernetTGIError, tried: int) -> InfernetTGIError:
    """The same error class, with the number of tries in its description."""
    if tried == 1:
        return exc
    return type(exc)(f"{exc} (gave up after {tried} tries)")
