"""One core for the app and the workflow class; a light package import; local refusals are job errors."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from enginekit import engine_env, job
from faketgi import FakeTGI, Ok
from infernet_tgi import TGIClientInferenceWorkflow
from infernet_tgi.config import Settings
from infernet_tgi.drain import Drain
from infernet_tgi.errors import ConstraintViolationError, UnsupportedRequestError
from infernet_tgi.generation import StreamDelta
from infernet_tgi.relay import Relay

COUNT_MODULES = """
import sys
before = set(sys.modules)
import infernet_tgi.errors
loaded = sorted(set(sys.modules) - before)
print(json.dumps(loaded))
""".replace("import sys", "import json, sys", 1)


def test_importing_errors_does_not_load_the_app() -> None:
    out = subprocess.run([sys.executable, "-c", COUNT_MODULES], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    ours = [name for name in loaded if name.startswith("infernet_tgi")]
    assert ours == ["infernet_tgi", "infernet_tgi.errors"], ours
    assert not {"quart", "aiohttp", "pydantic", "hypercorn"} & set(loaded)
    assert len(loaded) < 20, loaded  # the standard library modules errors.py needs


def test_package_names_still_resolve() -> None:
    import infernet_tgi

    assert infernet_tgi.TGIClientInferenceWorkflow is TGIClientInferenceWorkflow
    with pytest.raises(AttributeError):
        _ = infernet_tgi.nothing_like_this


async def test_workflow_runs_the_containers_core(fake: FakeTGI) -> None:
    """Used on its own, the workflow class checks constraints and takes the engine settings."""
    fake.script(Ok(text="not json at all"))
    workflow = TGIClientInferenceWorkflow(fake.url, 5, retry_params={"tries": 1})
    await workflow.setup()
    try:
        grammar = {"type": "json", "value": {"type": "object"}}
        with pytest.raises(ConstraintViolationError):
            await workflow.inference({"text": "x", "parameters": {"grammar": grammar}})
        assert fake.requests[-1].body["parameters"]["grammar"] == grammar
    finally:
        await workflow.aclose()
    settings = Settings.from_env(engine_env(fake.url, TGI_INF_UPSTREAM_KIND="datacrunch", TGI_INF_MODEL="m"))
    workflow = TGIClientInferenceWorkflow(fake.url, 5, settings=settings)
    await workflow.setup()
    try:
        fake.script(Ok(text="ok"))
        assert await workflow.inference("x") == "ok"
        assert fake.requests[-1].path == "/v1/completions/generate"
        assert fake.requests[-1].body["model"] == "m"
    finally:
        await workflow.aclose()


async def test_local_refusal_is_a_job_error_not_an_upstream_attempt(app_for: Any, fake: FakeTGI) -> None:
    client = await app_for(engine_env(fake.url, TGI_INF_UPSTREAM_KIND="datacrunch", TGI_INF_MODEL="m"))
    response = await client.post(
        "/service_output", json=job({"messages": [{"role": "user", "content": "hi"}]})
    )
    body = json.loads(await response.get_data(as_text=True))
    assert response.status_code == UnsupportedRequestError.status == 422
    assert "has no chat route" in body["description"]
    assert fake.requests == []
    metrics = await (await client.get("/metrics")).get_data(as_text=True)
    assert "infernet_tgi_upstream_latency_seconds_count" not in metrics
    assert 'infernet_tgi_jobs_total{destination="offchain",outcome="422",source="offchain"} 1.0' in metrics


async def test_a_chat_template_refusal_is_a_job_error_not_an_upstream_attempt(
    app_for: Any, fake: FakeTGI
) -> None:
    template = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('the first turn must be the user') }}"
        "{% endif %}{{ messages[0]['content'] }}"
    )
    client = await app_for(engine_env(fake.url, TGI_INF_CHAT_TEMPLATE=template))
    response = await client.post(
        "/service_output", json=job({"messages": [{"role": "assistant", "content": "hi"}]})
    )
    body = json.loads(await response.get_data(as_text=True))
    assert response.status_code == 422
    assert "chat template (custom) failed: the first turn must be the user" in body["description"]
    assert fake.requests == []
    metrics = await (await client.get("/metrics")).get_data(as_text=True)
    assert "infernet_tgi_upstream_latency_seconds_count" not in metrics
    assert 'infernet_tgi_jobs_total{destination="offchain",outcome="422",source="offchain"} 1.0' in metrics


async def test_upstream_attempts_are_counted(client: Any, fake: FakeTGI) -> None:
    response = await client.post("/service_output", json=job({"text": "x"}))
    assert response.status_code == 200
    metrics = await (await client.get("/metrics")).get_data(as_text=True)
    assert 'infernet_tgi_upstream_latency_seconds_count{kind="generate",outcome="ok"} 1.0' in metrics


async def test_stream_body_closed_before_iteration_closes_upstream() -> None:
    """A stream body the server never reads still closes the upstream stream and frees its slot."""
    closed: list[str] = []

    async def upstream() -> AsyncGenerator[StreamDelta, None]:
        try:
            yield StreamDelta(text="b")
        finally:
            closed.append("upstream")

    rest = upstream()
    await anext(rest)  # started, as the core's first read leaves it
    deadline = asyncio.get_running_loop().time() + 5
    body = Relay(StreamDelta(text="a"), rest, deadline, Drain(5), on_close=lambda: closed.append("slot"))
    await body.aclose()
    assert closed == ["upstream", "slot"]


async def test_stream_deadline_ends_the_body_cleanly() -> None:
    async def slow() -> AsyncGenerator[StreamDelta, None]:
        yield StreamDelta(text="late")
        await asyncio.sleep(10)
        yield StreamDelta(text="never")

    rest = slow()
    await anext(rest)
    closed: list[str] = []
    deadline = asyncio.get_running_loop().time() + 0.2
    body = Relay(StreamDelta(text="first"), rest, deadline, Drain(5), on_close=lambda: closed.append("slot"))
    async with asyncio.timeout(3):
        chunks = [chunk async for chunk in body]
    assert chunks == [b"first"] and closed == ["slot"]
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_stream_deadline_never_fires_while_the_server_writes() -> None:
    """The consumer (the server writing a chunk) may be slow past the deadline: it is not cancelled;
    the body ends at its next wait for the upstream."""

    async def tokens() -> AsyncGenerator[StreamDelta, None]:
        for _ in range(3):
            await asyncio.sleep(0.01)  # a real upstream: each token is waited for
            yield StreamDelta(text="t")

    rest = tokens()
    await anext(rest)
    deadline = asyncio.get_running_loop().time() + 0.05
    body = Relay(StreamDelta(text="first"), rest, deadline, Drain(5), on_close=lambda: None)
    chunks = [await anext(body)]
    await asyncio.sleep(0.15)  # a slow write, past the deadline, with the body suspended
    chunks += [chunk async for chunk in body]
    assert chunks == [b"first"]
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_stream_ends_when_the_shutdown_grace_is_over() -> None:
    async def stalled() -> AsyncGenerator[StreamDelta, None]:
        yield StreamDelta(text="x")
        await asyncio.sleep(30)
        yield StreamDelta(text="never")

    rest = stalled()
    await anext(rest)
    drain = Drain(0.1)
    body = Relay(StreamDelta(text="first"), rest, asyncio.get_running_loop().time() + 30, drain, lambda: None)
    assert await anext(body) == b"first"
    drain.begin()
    async with asyncio.timeout(3):
        assert [chunk async for chunk in body] == []
    assert drain.expired
