"""PooledClient: httpx's API over aiohttp; every aiohttp failure comes out as the right httpx error."""

from __future__ import annotations

import asyncio
import inspect

import aiohttp
import httpx
import pytest

from faketgi import FakeTGI, Ok, Reset, Stall
from infernet_tgi.upstream.http import transport_error
from infernet_tgi.upstream.transport import PooledClient, _httpx_error


def aiohttp_errors() -> list[type[BaseException]]:
    return [
        cls
        for _, cls in inspect.getmembers(aiohttp, inspect.isclass)
        if issubclass(cls, aiohttp.ClientError)
    ]


def instance(cls: type[BaseException]) -> BaseException:
    for args in ((), ("boom",), (None, OSError(111, "refused"))):
        try:
            return cls(*args)
        except TypeError:
            continue
    return cls.__new__(cls)


@pytest.mark.parametrize("cls", aiohttp_errors(), ids=lambda c: c.__name__)
def test_every_aiohttp_error_maps_to_a_retryable_transport_error(cls: type[BaseException]) -> None:
    mapped = _httpx_error(instance(cls))
    assert isinstance(mapped, httpx.TransportError)
    assert transport_error(mapped, "http://h/x").retryable


def test_specific_mappings() -> None:
    assert type(_httpx_error(TimeoutError())) is httpx.ReadTimeout
    assert type(_httpx_error(aiohttp.ServerDisconnectedError())) is httpx.RemoteProtocolError
    assert type(_httpx_error(aiohttp.ConnectionTimeoutError())) is httpx.ConnectTimeout
    assert type(_httpx_error(aiohttp.SocketTimeoutError())) is httpx.ReadTimeout


async def test_requests_headers_cookies_and_json() -> None:
    with FakeTGI() as fake:
        client = PooledClient(headers={"X-A": "1"}, cookies={"c": "v"}, timeout=5)
        try:
            response = await client.post(fake.url + "/generate", json={"inputs": "q"})
            assert response.status_code == 200 and response.json()["generated_text"] == "echo: q"
            seen = fake.requests[-1]
            assert seen.headers["x-a"] == "1" and seen.headers["cookie"] == "c=v"
            assert (await client.get(fake.url + "/info")).json()["model_id"] == "fake/tgi-model"
        finally:
            await client.aclose()


async def test_failures_raise_httpx_errors() -> None:
    with FakeTGI() as fake:
        client = PooledClient(timeout=0.3)
        try:
            fake.script(Reset())
            with pytest.raises(httpx.TransportError):
                await client.post(fake.url + "/generate", json={"inputs": "q"})
            fake.script(Stall(3))
            with pytest.raises(httpx.ReadTimeout):
                await client.post(fake.url + "/generate", json={"inputs": "q"})
            with pytest.raises(httpx.ConnectError):
                await client.get("http://127.0.0.1:9/")
        finally:
            await client.aclose()


async def test_stream_left_early_closes_the_connection() -> None:
    with FakeTGI() as fake:
        client = PooledClient(timeout=5)
        fake.script(Ok(text=" ".join(["w"] * 100), token_delay=0.02))
        try:
            async with client.stream("POST", fake.url + "/generate_stream", json={"inputs": "q"}) as r:
                async for line in r.aiter_lines():
                    assert line.startswith("data:")
                    break
            for _ in range(100):
                if fake.disconnects:
                    break
                await asyncio.sleep(0.05)
            assert fake.disconnects == 1
        finally:
            await client.aclose()
