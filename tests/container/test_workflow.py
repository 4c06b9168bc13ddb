"""TGIClientInferenceWorkflow keeps infernet-ml's class name, constructor and methods; async inside."""

from __future__ import annotations

import inspect
import logging

import pytest

from containerkit import Waits
from faketgi import FakeTGI, Ok, Status
from infernet_tgi import RetryParams, TGIClientInferenceWorkflow, TgiInferenceRequest
from infernet_tgi.errors import UpstreamOverloadedError, UpstreamUnavailableError


def test_constructor_matches_infernet_ml() -> None:
    params = list(inspect.signature(TGIClientInferenceWorkflow).parameters)
    assert params[:5] == ["server_url", "timeout", "headers", "cookies", "retry_params"]
    assert inspect.signature(TGIClientInferenceWorkflow).parameters["timeout"].default == 30
    assert params[-1] == "inference_params"


async def test_setup_inference_and_stream(fake: FakeTGI) -> None:
    workflow = TGIClientInferenceWorkflow(
        fake.url, 5, {"X-Test": "1"}, None, {"tries": 2, "delay": 0}, max_new_tokens=7, temperature=0.5
    )
    with pytest.raises(ValueError, match="setup"):
        await workflow.inference("hi")
    await workflow.setup()  # never calls the backend
    assert fake.requests == [] and workflow.is_setup
    try:
        assert await workflow.inference("hi") == "echo: hi"
        sent = fake.requests[-1]
        assert sent.body["parameters"] == {"max_new_tokens": 7, "temperature": 0.5, "details": True}
        assert sent.headers["x-test"] == "1"
        request = TgiInferenceRequest(text="q", parameters={"max_new_tokens": 3})
        assert await workflow.inference(request) == "echo: q"
        assert fake.requests[-1].body["parameters"]["max_new_tokens"] == 3
        fake.script(Ok(text="a b c"))
        pieces = [piece async for piece in workflow.stream({"text": "s"})]
        assert "".join(pieces) == "a b c" and all(pieces)  # tokens that arrived together come together
    finally:
        await workflow.aclose()


async def test_retry_params_object_retries(fake: FakeTGI, waits: Waits) -> None:
    params = RetryParams(tries=3, delay=1, backoff=2, jitter=0)
    workflow = TGIClientInferenceWorkflow(fake.url, retry_params=params, sleep=waits)
    await workflow.setup()
    try:
        fake.script(Status(429, "Model is overloaded", "overloaded"), Ok(text="ok"))
        assert await workflow.inference("x") == "ok"
        assert waits == [1.0]
        fake.script(*[Status(429, "Model is overloaded", "overloaded")] * 3)
        with pytest.raises(UpstreamOverloadedError):
            await workflow.inference("x")
    finally:
        await workflow.aclose()


async def test_backend_down_raises_our_error_and_logs_no_secret(
    waits: Waits, caplog: pytest.LogCaptureFixture
) -> None:
    workflow = TGIClientInferenceWorkflow(
        "http://127.0.0.1:9", 1, {"Authorization": "Bearer hf_secret"}, retry_params={"tries": 2}, sleep=waits
    )
    await workflow.setup()
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(UpstreamUnavailableError) as info:
            await workflow.inference("x")
        assert "hf_secret" not in str(info.value)
        assert "hf_secret" not in caplog.text
    finally:
        await workflow.aclose()


def test_unknown_inference_params_are_refused() -> None:
    with pytest.raises(ValueError):
        TGIClientInferenceWorkflow("http://h", temprature=0.5)
