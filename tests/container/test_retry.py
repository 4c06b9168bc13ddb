"""The documented retry algorithm, asserted wait by wait with an injected sleep and jitter."""

from __future__ import annotations

import pytest

from infernet_tgi.errors import (
    InfernetTGIError,
    UpstreamOverloadedError,
    UpstreamUnavailableError,
    UpstreamValidationError,
)
from infernet_tgi.retry import RetryParams, RetryPolicy, waits


def test_defaults_match_the_documentation() -> None:
    params = RetryParams()
    assert (params.tries, params.delay, params.max_delay, params.backoff, params.jitter) == (
        3,
        3.0,
        None,
        2.0,
        (0.5, 1.5),
    )


def test_default_waits_are_3_then_6_5_to_7_5() -> None:
    assert list(waits(RetryParams(), uniform=lambda a, b: a)) == [3.0, 6.5]
    assert list(waits(RetryParams(), uniform=lambda a, b: b)) == [3.0, 7.5]


def test_backoff_jitter_and_cap() -> None:
    params = RetryParams(tries=6, delay=1, backoff=3, jitter=0.5, max_delay=10)
    # 1 -> 1*3+0.5=3.5 -> 3.5*3+0.5=11 capped to 10 -> 10*3+0.5 capped to 10 ...
    assert list(waits(params)) == [1.0, 3.5, 10.0, 10.0, 10.0]


def test_jitter_pair_draws_in_order() -> None:
    drawn = iter([0.5, 1.0, 1.5])
    params = RetryParams(tries=4, delay=2, backoff=2, jitter=(0.5, 1.5))
    assert list(waits(params, uniform=lambda a, b: next(drawn))) == [2.0, 4.5, 10.0]


def test_invalid_params_are_rejected() -> None:
    for bad in ({"tries": 0}, {"delay": -1}, {"jitter": [2, 1]}, {"unknown": 1}):
        with pytest.raises(ValueError):
            RetryParams.model_validate(bad)


class Flaky:
    def __init__(self, *errors: InfernetTGIError) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def policy(slept: list[float], start: float = 0.0, **params: object) -> RetryPolicy:
    """A policy whose clock advances only by the waits it takes."""

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    return RetryPolicy(
        params=RetryParams.model_validate(params),
        sleep=sleep,
        uniform=lambda a, b: (a + b) / 2,
        clock=lambda: start + sum(slept),
    )


async def test_retries_retryable_errors_with_exact_waits() -> None:
    slept: list[float] = []
    attempt = Flaky(UpstreamOverloadedError("busy"), UpstreamUnavailableError("down"))
    assert await policy(slept).call(attempt) == "ok"
    assert attempt.calls == 3 and slept == [3.0, 7.0]


async def test_passing_retry_params_keeps_retrying() -> None:
    """The reference's bug (D1): any retry_params switched retries off. Here tries=3 means 3."""
    slept: list[float] = []
    attempt = Flaky(UpstreamOverloadedError("busy"), UpstreamOverloadedError("busy"))
    assert await policy(slept, tries=3, delay=1, backoff=2, jitter=0).call(attempt) == "ok"
    assert slept == [1.0, 2.0]


async def test_validation_errors_are_never_retried() -> None:
    slept: list[float] = []
    attempt = Flaky(UpstreamValidationError("bad"))
    with pytest.raises(UpstreamValidationError):
        await policy(slept).call(attempt)
    assert attempt.calls == 1 and slept == []


async def test_gives_up_after_tries_without_a_last_wait() -> None:
    slept: list[float] = []
    attempt = Flaky(*[UpstreamOverloadedError("busy")] * 5)
    with pytest.raises(UpstreamOverloadedError, match="gave up after 3 tries"):
        await policy(slept).call(attempt)
    assert attempt.calls == 3 and slept == [3.0, 7.0]


async def test_deadline_stops_waiting_early() -> None:
    slept: list[float] = []
    attempt = Flaky(*[UpstreamOverloadedError("busy")] * 5)
    with pytest.raises(UpstreamOverloadedError):
        await policy(slept, start=100.0, tries=5, delay=1, backoff=2, jitter=0).call(attempt, deadline=102.5)
    assert slept == [1.0]  # the next wait (2 s) would end at 103, past the deadline
    assert attempt.calls == 2


async def test_single_try_raises_the_original_error() -> None:
    slept: list[float] = []
    error = UpstreamOverloadedError("busy")
    with pytest.raises(UpstreamOverloadedError) as info:
        await policy(slept, tries=1).call(Flaky(error))
    assert info.value is error and slept == []
