"""The hot path (`JobRoute`): `POST /service_output` served in front of Quart, answering exactly as the
Quart view does, with the body limit, bearer check and disconnects handled on a real server."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from containerkit import RunningContainer, env_for
from faketgi import FakeTGI, Ok
from infernet_tgi.app import create_app
from infernet_tgi.config import Settings

JOB = {"source": 1, "destination": 1, "data": {"text": "hi"}}
BODIES: list[bytes] = [
    json.dumps(JOB).encode(),
    json.dumps({"source": 1, "destination": 2, "data": {"text": "a b c"}}).encode(),
    b"{not json",
    json.dumps({"source": 1, "destination": 1, "data": {"text": "x", "parameters": {"top_p": 2}}}).encode(),
    json.dumps({"source": 1, "destination": 1, "data": "zz"}).encode(),
]


async def test_hot_path_answers_as_the_quart_view(app_for: Any, fake: FakeTGI) -> None:
    client = await app_for(env_for(fake.url, TGI_INF_BEARER="s3cret"))
    view_calls = []
    view = client.app.view_functions["service_output"]

    async def counted() -> Any:
        view_calls.append(1)
        return await view()

    client.app.view_functions["service_output"] = counted
    for headers in ({"Authorization": "Bearer s3cret"}, {}, {"Authorization": "Bearer nope"}):
        for body in BODIES:
            fast = await client.post("/service_output", data=body, headers=headers)
            assert not view_calls  # the hot path answered
            slow = await client.post("/x/service_output", data=body, headers=headers, root_path="/x")
            # under a root path Quart answered: its view, or its bearer check before it
            assert view_calls == ([] if slow.status_code == 401 else [1])
            view_calls.clear()
            assert (fast.status_code, fast.content_type) == (slow.status_code, slow.content_type)
            assert await fast.get_data() == await slow.get_data()
            if not headers:
                assert fast.status_code == 401
    # other methods on the route are still Quart's (a JSON 405 naming what is allowed)
    refused = await client.get("/service_output", headers={"Authorization": "Bearer s3cret"})
    assert refused.status_code == 405 and refused.headers["Allow"] == "POST"


@pytest.fixture(scope="module")
def small_limit() -> Iterator[tuple[FakeTGI, str]]:
    with FakeTGI() as fake, RunningContainer(env_for(fake.url, TGI_INF_MAX_BODY_BYTES="2000")) as url:
        yield fake, url


def test_body_over_the_limit_is_a_413_with_or_without_a_length(small_limit: tuple[FakeTGI, str]) -> None:
    _, url = small_limit
    big = json.dumps({**JOB, "data": {"text": "x" * 3000}}).encode()

    def chunked() -> Iterator[bytes]:
        for start in range(0, len(big), 500):
            yield big[start : start + 500]

    for content in (big, chunked()):
        answer = httpx.post(url + "/service_output", content=content, timeout=10)
        assert answer.status_code == 413
        assert answer.json() == {
            "code": "413",
            "name": "Request Entity Too Large",
            "description": "request body is over 2000 bytes (TGI_INF_MAX_BODY_BYTES)",
        }
    small = json.dumps(JOB).encode()
    answer = httpx.post(url + "/service_output", content=iter([small[:10], small[10:]]), timeout=10)
    assert answer.status_code == 200 and answer.json()["output"] == "echo: hi"


def test_client_leaving_cancels_its_job_upstream(small_limit: tuple[FakeTGI, str]) -> None:
    fake, url = small_limit
    fake.reset()
    fake.script(Ok(delay=3))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/service_output", json=JOB, timeout=0.5)  # hangs up after 0.5 s
    deadline = time.monotonic() + 2
    while _in_flight(url) != 0.0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _in_flight(url) == 0.0  # cancelled at once, not after the upstream's 3 s
    answer = httpx.post(url + "/service_output", json=JOB, timeout=10)
    assert answer.status_code == 200  # the worker serves on


def _in_flight(url: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("infernet_tgi_jobs_in_flight "):
            return float(line.split()[1])
    raise AssertionError("no in-flight gauge")


@pytest.mark.parametrize("arrived", [[b'{"source": 1, '], [b"{", b'"source"'], []])
async def test_a_body_that_stops_or_never_starts_arriving_is_a_408(
    fake: FakeTGI, arrived: list[bytes]
) -> None:
    app = create_app(Settings.from_env(env_for(fake.url)), body_timeout=0.2)
    parts = [{"type": "http.request", "body": part, "more_body": True} for part in arrived]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if parts:
            return parts.pop(0)
        await asyncio.Event().wait()  # the rest of the body never comes
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/service_output", "root_path": "", "headers": []}
    started = time.monotonic()
    async with asyncio.timeout(5):  # a body timeout that never fires fails here, not by hanging
        await app(scope, receive, send)  # the app's own ASGI entry: JobRoute in front of Quart
    assert time.monotonic() - started < 2
    assert sent[0]["status"] == 408
    assert json.loads(sent[1]["body"]) == {
        "code": "408",
        "name": "Request Timeout",
        "description": "the request body did not arrive within 0.2 s",
    }
    assert fake.requests == []  # nothing went upstream


def _made_by_the_container(obj: Any) -> bool:
    """An instance of one of the container's classes, or a frame, function, coroutine or
    generator running its code. Other threads of the test process (the fake TGI's, an earlier
    test's clean-up) may leave cycles of their own meanwhile; those are not the jobs'."""
    if type(obj).__module__.startswith("infernet_tgi"):
        return True
    code = None
    for attribute in ("f_code", "__code__", "cr_code", "gi_code", "ag_code"):
        code = getattr(obj, attribute, None) if code is None else code
    return code is not None and f"{os.sep}infernet_tgi{os.sep}" in code.co_filename


async def test_jobs_leave_nothing_for_the_cyclic_collector(app_for: Any, fake: FakeTGI) -> None:
    # A reference cycle per job is memory held until the next collection, which the worker makes
    # rare (GC_YOUNG): every job's objects must go by reference counting when it ends.
    client = await app_for(env_for(fake.url))
    bodies = [JOB, {**JOB, "destination": 2}, {"source": 1, "destination": 1, "data": "zz"}]
    for body in bodies:  # warm up: first-use caches are not garbage
        await client.post("/service_output", json=body)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(10):
            for body in bodies:
                response = await client.post("/service_output", json=body)
                await response.get_data()
        gc.collect()
        mine = [o for o in gc.garbage if _made_by_the_container(o)]
        assert mine == [], sorted({type(o).__qualname__ for o in gc.garbage})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
