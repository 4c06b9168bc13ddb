"""Several upstream URLs: load spread, failover on connection errors and 503 within one attempt, and a
failed upstream skipped until its health check passes again (real TGI-protocol fakes on loopback)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from containerkit import Waits
from enginekit import engine_env, free_port, job
from faketgi import FakeTGI, Ok, Reset, Status
from infernet_tgi.config import Settings
from infernet_tgi.errors import ConfigError, UpstreamUnavailableError
from infernet_tgi.upstream.base import GenerationRequest
from infernet_tgi.upstream.client import HTTPClient
from infernet_tgi.upstream.native import NativeTGI
from infernet_tgi.upstream.pool import UpstreamPool

REQUEST = GenerationRequest(prompt="hi", parameters={"max_new_tokens": 3})


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[FakeTGI, FakeTGI]]:
    with FakeTGI(model_id="a") as a, FakeTGI(model_id="b") as b:
        yield a, b


@pytest.fixture
def servers(pair: tuple[FakeTGI, FakeTGI]) -> tuple[FakeTGI, FakeTGI]:
    for server in pair:
        server.reset()
    return pair


def generate_calls(server: FakeTGI) -> int:
    return sum(1 for r in server.requests if r.method == "POST")


async def run(client: Any, body: dict[str, Any]) -> tuple[int, Any]:
    response = await client.post("/service_output", json=body)
    return response.status_code, json.loads(await response.get_data(as_text=True))


async def test_jobs_are_spread_across_urls(app_for: Any, servers: tuple[FakeTGI, FakeTGI]) -> None:
    a, b = servers
    client = await app_for(engine_env(a.url, b.url))
    for _ in range(6):
        assert (await run(client, job({"text": "x"})))[0] == 200
    assert (generate_calls(a), generate_calls(b)) == (3, 3)


@pytest.mark.parametrize("fault", [Reset(), Status(503, "unhealthy", "healthcheck")], ids=["reset", "503"])
async def test_failover_within_one_attempt_then_skip(
    app_for: Any, servers: tuple[FakeTGI, FakeTGI], waits: Waits, fault: Any
) -> None:
    a, b = servers
    a.script(fault)
    client = await app_for(engine_env(a.url, b.url, tries=3, TGI_INF_HEALTH_INTERVAL="60"))
    status, body = await run(client, job({"text": "x"}))
    assert (status, body["output"]) == (200, "echo: x")
    assert waits == []  # no retry: the pool moved on inside the attempt
    for _ in range(4):
        assert (await run(client, job({"text": "x"})))[0] == 200
    assert (generate_calls(a), generate_calls(b)) == (1, 5)  # a is skipped while down
    text = await (await client.get("/metrics")).get_data(as_text=True)
    assert 'infernet_tgi_upstream_failovers_total{error="UpstreamUnavailableError"} 1.0' in text
    assert "infernet_tgi_upstreams_down 1.0" in text


async def test_overloaded_moves_on_without_marking_down(servers: tuple[FakeTGI, FakeTGI]) -> None:
    a, b = servers
    a.script(Status(429, "Model is overloaded", "overloaded"))
    async with HTTPClient() as http:
        pool = UpstreamPool([NativeTGI(http, a.url), NativeTGI(http, b.url)])
        assert (await pool.generate(REQUEST)).text == "echo: hi"
        assert not pool.is_down(0)
        await pool.aclose()


async def test_down_member_returns_after_its_health_check(servers: tuple[FakeTGI, FakeTGI]) -> None:
    a, _ = servers
    port = free_port()
    dead = f"http://127.0.0.1:{port}"
    async with HTTPClient() as http:
        pool = UpstreamPool([NativeTGI(http, dead), NativeTGI(http, a.url)], recheck_interval=0.05)
        assert (await pool.generate(REQUEST)).text == "echo: hi"
        assert pool.is_down(0)
        probes: list[str] = []

        async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            probes.append((await reader.readline()).decode().strip())
            writer.close()  # answers nothing: the health check fails

        server = await asyncio.start_server(refuse, "127.0.0.1", port)
        await asyncio.sleep(0.06)
        assert (await pool.generate(REQUEST)).text == "echo: hi"  # skips 0, starts its health check
        for _ in range(100):
            if probes:
                break
            await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()
        assert probes and set(probes) == {"GET /health HTTP/1.1"}  # the probe ran; no job went to 0
        await asyncio.sleep(0.02)
        assert pool.is_down(0)
        with FakeTGI(port=port) as revived:
            await pool.check_now()
            assert not pool.is_down(0)
            assert [r.path for r in revived.requests] == ["/health"]
            for _ in range(4):
                await pool.generate(REQUEST)
            assert generate_calls(revived) == 2
        await pool.aclose()


async def test_every_member_down_is_503_and_retried(app_for: Any, waits: Waits) -> None:
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    client = await app_for(engine_env(*dead, tries=2))
    status, body = await run(client, job({"text": "x"}))
    assert status == 503 and body["code"] == "503" and "upstream unreachable" in body["description"]
    assert waits == [1]


async def test_all_down_members_are_still_tried(servers: tuple[FakeTGI, FakeTGI]) -> None:
    """When nothing is healthy, a real request is the freshest health check."""
    a, b = servers
    a.script(Reset())
    b.script(Reset())
    async with HTTPClient() as http:
        pool = UpstreamPool([NativeTGI(http, a.url), NativeTGI(http, b.url)], recheck_interval=60)
        with pytest.raises(UpstreamUnavailableError):
            await pool.generate(REQUEST)
        assert pool.is_down(0) and pool.is_down(1)
        assert (await pool.generate(REQUEST)).text == "echo: hi"
        await pool.aclose()


async def test_stream_fails_over_before_its_first_event(
    app_for: Any, servers: tuple[FakeTGI, FakeTGI]
) -> None:
    a, b = servers
    a.script(Reset())
    b.script(Ok(text="from b"))
    client = await app_for(engine_env(a.url, b.url))
    response = await client.post("/service_output", json=job({"text": "x"}, destination=2))
    assert (response.status_code, await response.get_data(as_text=True)) == (200, "from b")


@pytest.mark.parametrize(
    "env,fragment",
    [
        ({"TGI_INF_UPSTREAM_KIND": "sglang"}, "TGI_INF_UPSTREAM_KIND: expected one of tgi, openai, runpod"),
        ({"TGI_INF_UPSTREAM_URLS": "http://a:1,ftp://b"}, "TGI_INF_UPSTREAM_URLS: 'ftp://b' is not"),
        ({"TGI_INF_OPENAI_FLAVOR": "sglang"}, "TGI_INF_OPENAI_FLAVOR: expected one of auto, vllm, tgi"),
        ({"TGI_INF_VLLM_STRUCTURED": "x"}, "TGI_INF_VLLM_STRUCTURED: expected one of auto"),
        ({"TGI_INF_HEALTH_INTERVAL": "0"}, "TGI_INF_HEALTH_INTERVAL: must be a positive"),
        ({"TGI_INF_VAST_COST": "-1"}, "TGI_INF_VAST_COST: must be a positive workload"),
    ],
)
def test_upstream_settings_errors_name_the_variable(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert fragment in str(info.value)


def test_urls_override_the_positional_server_url() -> None:
    settings = Settings.from_env({
        "TGI_INF_WORKFLOW_POSITIONAL_ARGS": '["http://one:80", 5]',
        "TGI_INF_UPSTREAM_URLS": " http://a:1/ , http://b:2",
        "TGI_INF_API_KEY": "k",
        "TGI_INF_TOKEN": "hf",
    })
    assert settings.urls == ("http://a:1", "http://b:2")
    assert settings.upstream_headers() == {"Authorization": "Bearer k"}
    assert Settings.from_env({"TGI_INF_WORKFLOW_POSITIONAL_ARGS": '["http://one:80"]'}).urls == ("http://one:80",)
