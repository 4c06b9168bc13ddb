"""Vast.ai's serverless flow through the real app: `/route/` for a signed ticket, then the worker with
`{auth_data, payload}`; the ticket must come back byte for byte (RSA PKCS#1 v1.5 over SHA-256)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from enginekit import engine_env, job
from fakeengines import FakeVast
from infernet_tgi.config import Settings
from infernet_tgi.errors import ConfigError, UpstreamUnavailableError
from infernet_tgi.upstream.base import GenerationRequest
from infernet_tgi.upstream.client import HTTPClient
from infernet_tgi.upstream.vast import VastUpstream


@pytest.fixture(scope="module")
def vast_server() -> Iterator[FakeVast]:
    with FakeVast() as server:
        yield server


@pytest.fixture
def vast(vast_server: FakeVast) -> FakeVast:
    vast_server.requests.clear()
    vast_server.tickets.clear()
    vast_server.echoed.clear()
    vast_server.no_worker = 0
    vast_server.rejected = 0
    return vast_server


def vast_env(server: FakeVast, **extra: Any) -> dict[str, str]:
    return engine_env(
        server.url,
        TGI_INF_UPSTREAM_KIND="vast",
        TGI_INF_API_KEY=server.api_key,
        TGI_INF_VAST_ENDPOINT=server.endpoint,
        TGI_INF_POLL_INTERVAL="0.01",
        **extra,
    )


async def run(client: Any, body: dict[str, Any]) -> tuple[int, Any]:
    response = await client.post("/service_output", json=body)
    text = await response.get_data(as_text=True)
    if response.content_type.startswith("application/json"):
        return response.status_code, json.loads(text)
    return response.status_code, text


async def test_route_then_worker_with_the_ticket_echoed_byte_for_byte(app_for: Any, vast: FakeVast) -> None:
    client = await app_for(vast_env(vast))
    status, body = await run(client, job({"text": "tell me about cats"}))
    assert status == 200, body
    assert body["output"] == "echo: tell me about cats" and body["finish_reason"] == "length"
    route = vast.posts("/route/")[-1]
    assert route.body == {"endpoint": "café-tgi", "api_key": "vast-key", "cost": 16}
    assert vast.echoed == vast.tickets and vast.rejected == 0
    # the ticket's unusual spelling survived: an exponent float and an escaped é
    assert "E2" in vast.echoed[0] and "\\u00e9" in vast.echoed[0]
    worker = vast.posts("/generate")[-1]
    assert worker.body["payload"] == {
        "inputs": "tell me about cats",
        "parameters": {"max_new_tokens": 16, "details": True},
    }
    assert "authorization" not in worker.headers or "vast-key" not in worker.headers["authorization"]


async def test_a_re_encoded_ticket_would_be_caught(vast: FakeVast) -> None:
    """The fake really checks: the same ticket parsed and re-encoded differs in bytes."""
    async with HTTPClient() as http:
        ticket = (await http.post(vast.url + "/route/", json={
            "endpoint": vast.endpoint, "api_key": vast.api_key, "cost": 256})).body.decode()
    assert json.dumps(json.loads(ticket)) != ticket


async def test_stream_through_the_worker(app_for: Any, vast: FakeVast) -> None:
    client = await app_for(vast_env(vast))
    status, text = await run(client, job({"text": "a b c"}, destination=2))
    assert (status, text) == (200, "echo: a b c")
    assert vast.posts("/generate_stream") and vast.echoed == vast.tickets


async def test_no_worker_yet_is_polled_with_backoff(app_for: Any, vast: FakeVast) -> None:
    vast.no_worker = 2
    client = await app_for(vast_env(vast))
    status, body = await run(client, job({"text": "x"}))
    assert status == 200, body
    assert len(vast.posts("/route/")) == 3


async def test_no_worker_within_the_wait_is_unavailable(vast: FakeVast) -> None:
    vast.no_worker = 1000
    async with HTTPClient() as http:
        upstream = VastUpstream(http, vast.url, api_key=vast.api_key, endpoint=vast.endpoint,
                                route_wait=0.1, poll_interval=0.02)
        with pytest.raises(UpstreamUnavailableError, match="no Vast worker ready for endpoint 'café-tgi'"):
            await upstream.generate(GenerationRequest(prompt="x", parameters={"max_new_tokens": 3}))


async def test_worker_drops_the_constraint_which_is_reported(app_for: Any, vast: FakeVast) -> None:
    """The legacy worker forwards only inputs and max_new_tokens: the grammar is lost on the way."""
    client = await app_for(vast_env(vast))
    status, body = await run(client, job({"text": "x", "parameters": {"response_pool": ["yes", "no"]}}))
    assert status == 502 and "ignored the constraint" in body["description"]
    assert vast.posts("/generate")[-1].body["payload"]["parameters"]["grammar"] == {
        "type": "regex", "value": "(yes|no)"}


async def test_wrong_api_key_at_the_router(app_for: Any, vast: FakeVast) -> None:
    env = vast_env(vast)
    env["TGI_INF_API_KEY"] = "bad"
    status, body = await run(await app_for(env), job({"text": "x"}))
    assert status == 502 and "bad api key" in body["description"] and "/route/" in body["description"]


async def test_configured_cost_is_used(app_for: Any, vast: FakeVast) -> None:
    client = await app_for(vast_env(vast, TGI_INF_VAST_COST="100"))
    assert (await run(client, job({"text": "x"})))[0] == 200
    assert vast.posts("/route/")[-1].body["cost"] == 100.0


def test_vast_settings() -> None:
    settings = Settings.from_env({"TGI_INF_UPSTREAM_KIND": "vast", "TGI_INF_VAST_ENDPOINT": "e",
                                  "TGI_INF_API_KEY": "k", "TGI_INF_TOKEN": "hf"})
    assert settings.urls == ("https://run.vast.ai",)
    assert settings.upstream_headers() == {"Authorization": "Bearer hf"}  # the Vast key stays in the body
    with pytest.raises(ConfigError, match="TGI_INF_VAST_ENDPOINT is required"):
        Settings.from_env({"TGI_INF_UPSTREAM_KIND": "vast"})
