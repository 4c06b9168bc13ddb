"""RunPod's queue API (`/runsync`, `/status`, `/run` + `/stream`) through the real app, against a
scripted loopback RunPod whose jobs run a vLLM rule set."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from enginekit import engine_env, job
from fakeengines import FakeRunPod
from infernet_tgi.config import Settings
from infernet_tgi.errors import ConfigError
from infernet_tgi.upstream.base import GenerationRequest
from infernet_tgi.upstream.client import HTTPClient
from infernet_tgi.upstream.runpod import RunPodUpstream


@pytest.fixture(scope="module")
def runpod_server() -> Iterator[FakeRunPod]:
    with FakeRunPod() as server:
        yield server


@pytest.fixture
def runpod(runpod_server: FakeRunPod) -> FakeRunPod:
    runpod_server.requests.clear()
    runpod_server.pending_polls = 0
    runpod_server.fail = None
    runpod_server.raw_sse = True
    runpod_server.cancelled.clear()
    return runpod_server


def runpod_env(server: FakeRunPod, **extra: Any) -> dict[str, str]:
    return engine_env(
        server.base,
        TGI_INF_UPSTREAM_KIND="runpod",
        TGI_INF_API_KEY=server.api_key,
        TGI_INF_MODEL="rp/model",
        TGI_INF_POLL_INTERVAL="0.01",
        **extra,
    )


async def run(client: Any, body: dict[str, Any]) -> tuple[int, Any]:
    response = await client.post("/service_output", json=body)
    text = await response.get_data(as_text=True)
    if response.content_type.startswith("application/json"):
        return response.status_code, json.loads(text)
    return response.status_code, text


async def test_runsync_completed(app_for: Any, runpod: FakeRunPod) -> None:
    client = await app_for(runpod_env(runpod))
    status, body = await run(client, job({"text": "hello pod"}))
    assert status == 200, body
    assert body == {
        "output": "echo: hello pod",
        "finish_reason": "eos_token",
        "usage": {"prompt_tokens": 2, "completion_tokens": 3},
    }
    sent = runpod.posts("/runsync?wait=8000")[-1]  # 0.8 x the 10 s timeout: never a read timeout
    assert sent.headers["authorization"] == "Bearer rp-key"
    assert sent.body == {
        "input": {
            "openai_route": "/v1/completions",
            "openai_input": {
                "model": "rp/model",
                "prompt": "hello pod",
                "max_tokens": 16,
                "temperature": 0.0,
            },
        }
    }


async def test_runsync_unfinished_is_polled_on_status(app_for: Any, runpod: FakeRunPod) -> None:
    runpod.pending_polls = 3
    client = await app_for(runpod_env(runpod))
    status, body = await run(client, job({"messages": [{"role": "user", "content": "hi"}]}))
    assert status == 200 and body["output"] == "echo: hi", body
    polls = [r for r in runpod.requests if r.path.startswith("/v2/ep123/status/")]
    assert len(polls) == 4  # three IN_PROGRESS, then COMPLETED
    assert runpod.posts("/runsync?wait=8000")[-1].body["input"]["openai_route"] == "/v1/chat/completions"


async def test_failed_job_is_a_generation_error(app_for: Any, runpod: FakeRunPod) -> None:
    runpod.fail = "vLLM returned HTTP 400: max_tokens too large"
    client = await app_for(runpod_env(runpod))
    status, body = await run(client, job({"text": "x"}))
    assert status == 424 and "failed" in body["description"] and "max_tokens too large" in body["description"]


async def test_constraint_goes_to_vllm_inside_the_job(app_for: Any, runpod: FakeRunPod) -> None:
    client = await app_for(runpod_env(runpod))
    status, body = await run(client, job({"text": "x", "parameters": {"response_pool": ["yes", "no"]}}))
    assert (status, body["output"]) == (200, "no")
    sent = runpod.posts("/runsync?wait=8000")[-1].body["input"]["openai_input"]
    assert sent["structured_outputs"] == {"choice": ["yes", "no"]}


@pytest.mark.parametrize("raw_sse", [True, False], ids=["raw-sse", "chunk-objects"])
async def test_stream_polls_run_then_stream(app_for: Any, runpod: FakeRunPod, raw_sse: bool) -> None:
    runpod.raw_sse = raw_sse
    client = await app_for(runpod_env(runpod))
    words = " ".join(f"w{i}" for i in range(20))
    status, text = await run(client, job({"text": words}, destination=2))
    assert (status, text) == (200, f"echo: {words}")
    assert runpod.posts("/run")[-1].body["input"]["openai_input"]["stream"] is True
    polls = [r for r in runpod.requests if "/stream/" in r.path]
    assert len(polls) >= 4  # batches of 1, 3, 9, 27 events
    assert runpod.cancelled == []


async def test_stream_of_a_failed_job(app_for: Any, runpod: FakeRunPod) -> None:
    runpod.fail = "CUDA out of memory"
    client = await app_for(runpod_env(runpod))
    status, body = await run(client, job({"text": "x"}, destination=2))
    assert status == 424 and "CUDA out of memory" in body["description"]


async def test_wrong_key_is_reported(app_for: Any, runpod: FakeRunPod) -> None:
    env = runpod_env(runpod)
    env["TGI_INF_API_KEY"] = "nope"
    status, body = await run(await app_for(env), job({"text": "x"}))
    assert status == 502 and "401" in body["description"]


def test_runpod_settings() -> None:
    settings = Settings.from_env(
        {"TGI_INF_UPSTREAM_KIND": "runpod", "TGI_INF_RUNPOD_ENDPOINT": "abc123", "TGI_INF_MODEL": "m"}
    )
    assert settings.urls == ("https://api.runpod.ai/v2/abc123",)
    with pytest.raises(ConfigError, match="TGI_INF_MODEL is required when TGI_INF_UPSTREAM_KIND=runpod"):
        Settings.from_env({"TGI_INF_UPSTREAM_KIND": "runpod", "TGI_INF_RUNPOD_ENDPOINT": "abc"})
    with pytest.raises(ConfigError, match="TGI_INF_RUNPOD_ENDPOINT"):
        Settings.from_env({"TGI_INF_UPSTREAM_KIND": "runpod", "TGI_INF_MODEL": "m"})


async def test_stream_closed_early_cancels_the_job(runpod: FakeRunPod) -> None:
    async with HTTPClient() as http:
        upstream = RunPodUpstream(http, runpod.base, api_key=runpod.api_key, model="rp/model",
                                  poll_interval=0.01)
        request = GenerationRequest(prompt=" ".join(["w"] * 30), parameters={"max_new_tokens": 40})
        events = upstream.stream(request)
        first = await anext(events)
        assert first.text == "echo:"
        await events.aclose()
    assert runpod.cancelled == [list(runpod.jobs)[-1]]


async def test_deadline_while_polling_cancels_the_job(runpod: FakeRunPod) -> None:
    runpod.pending_polls = 1000
    async with HTTPClient() as http:
        upstream = RunPodUpstream(http, runpod.base, api_key=runpod.api_key, model="rp/model",
                                  poll_interval=0.01)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await upstream.generate(GenerationRequest(prompt="x", parameters={"max_new_tokens": 3}))
    assert runpod.cancelled == [list(runpod.jobs)[-1]]
