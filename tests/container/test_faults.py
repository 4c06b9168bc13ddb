"""Each upstream fault gets the container's exact answer, with retries driven by an injected sleep."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from quart.typing import TestClientProtocol as Client

from containerkit import Waits, env_for
from faketgi import FakeTGI, Ok, Reset, Stall, Status, StreamError

OFFCHAIN = {"source": 1, "destination": 1, "data": {"text": "hi"}, "requires_proof": False}
STREAM = {"source": 1, "destination": 2, "data": {"text": "hi"}}


async def post(client: Client, body: dict[str, Any] = OFFCHAIN) -> tuple[int, Any]:
    response = await asyncio.wait_for(client.post("/service_output", json=body), 20)
    return response.status_code, json.loads(await response.get_data(as_text=True))


async def test_validation_422_is_kept_and_never_retried(client: Client, fake: FakeTGI, waits: Waits) -> None:
    message = "Input validation error: `inputs` must have less than 2048 tokens. Given: 4000"
    fake.script(Status(422, message, "validation"))
    status, body = await post(client)
    assert (status, body["code"], body["name"]) == (422, "422", "Unprocessable Entity")
    assert message in body["description"]
    assert len(fake.requests) == 1 and waits == []


async def test_generation_424_is_not_retried(client: Client, fake: FakeTGI, waits: Waits) -> None:
    fake.script(Status(424, "Request failed during generation: CUDA OOM", "generation"))
    status, body = await post(client)
    assert status == 424 and "CUDA OOM" in body["description"]
    assert len(fake.requests) == 1 and waits == []


async def test_overloaded_then_ok_retries_with_backoff(client: Client, fake: FakeTGI, waits: Waits) -> None:
    fake.script(Status(429, "Model is overloaded", "overloaded"), Status(503, "loading"), Ok(text="done"))
    status, body = await post(client)
    assert (status, body["output"]) == (200, "done")
    assert waits == [1, 2]  # delay 1, backoff 2, jitter 0 (see env_for)
    assert len(fake.requests) == 3


async def test_overloaded_every_time_gives_429_after_all_tries(
    client: Client, fake: FakeTGI, waits: Waits
) -> None:
    fake.script(*[Status(429, "Model is overloaded", "overloaded")] * 3)
    status, body = await post(client)
    assert status == 429 and body["code"] == "429"
    assert "upstream overloaded" in body["description"]
    assert "Model is overloaded" in body["description"]
    assert "gave up after 3 tries" in body["description"]
    assert waits == [1, 2]


async def test_shard_not_ready_424_without_generation_type_is_retried(
    client: Client, fake: FakeTGI, waits: Waits
) -> None:
    fake.script(Status(424, "shard not ready"), Ok(text="ok"))
    status, body = await post(client)
    assert (status, body["output"], waits) == (200, "ok", [1])


async def test_500_with_plain_text_body_is_a_502_not_retried(
    client: Client, fake: FakeTGI, waits: Waits
) -> None:
    fake.script(Status(500, raw=b"Internal Server Error", content_type="text/plain"))
    status, body = await post(client)
    assert status == 502 and "Internal Server Error" in body["description"]
    assert waits == []


async def test_connection_reset_is_retried_then_reported(client: Client, fake: FakeTGI, waits: Waits) -> None:
    fake.script(Reset(), Reset(), Reset())
    status, body = await post(client)
    assert status == 503 and body["code"] == "503"
    assert "upstream closed the connection" in body["description"]
    assert waits == [1, 2] and len(fake.requests) == 3


async def test_reset_then_ok(client: Client, fake: FakeTGI, waits: Waits) -> None:
    fake.script(Reset(), Ok(text="recovered"))
    status, body = await post(client)
    assert (status, body["output"]) == (200, "recovered")


async def test_stall_past_timeout_is_504_and_does_not_hang(app_for: Any, fake: FakeTGI) -> None:
    env = env_for(fake.url, TGI_INF_WORKFLOW_KW_ARGS={"retry_params": {"tries": 2, "delay": 0}})
    env["TGI_INF_WORKFLOW_POSITIONAL_ARGS"] = json.dumps([fake.url, 0.3])
    client = await app_for(env)
    fake.script(Stall(5), Stall(5))
    status, body = await post(client)
    assert status == 504 and "timed out" in body["description"]
    assert len(fake.requests) == 2


async def test_job_deadline_caps_retries(app_for: Any, fake: FakeTGI) -> None:
    env = env_for(fake.url, TGI_INF_JOB_DEADLINE="0.5")
    client = await app_for(env)
    fake.script(Stall(5))
    status, body = await post(client)
    assert status == 504 and "job deadline" in body["description"]


async def test_backend_down_is_503_naming_the_url(app_for: Any, waits: Waits) -> None:
    client = await app_for(env_for("http://127.0.0.1:9"))
    status, body = await post(client)
    assert status == 503
    assert body["description"].startswith("upstream unreachable at http://127.0.0.1:9/generate")
    assert waits == [1, 2]


async def test_stream_error_event_before_first_token_is_an_http_error(client: Client, fake: FakeTGI) -> None:
    fake.script(StreamError(tokens=0))
    status, body = await post(client, STREAM)
    assert status == 422 and "`temperature` must be strictly positive" in body["description"]


async def test_stream_overloaded_event_is_retried(client: Client, fake: FakeTGI, waits: Waits) -> None:
    fake.script(StreamError(0, "Model is overloaded", "overloaded"), Ok(text="a b"))
    response = await client.post("/service_output", json=STREAM)
    assert response.status_code == 200
    assert await response.get_data(as_text=True) == "a b"
    assert waits == [1]


async def test_stream_error_after_tokens_ends_the_stream(client: Client, fake: FakeTGI) -> None:
    fake.script(StreamError(tokens=2))
    response = await client.post("/service_output", json=STREAM)
    assert response.status_code == 200
    assert await response.get_data(as_text=True) == "t0t1"


async def test_stream_status_error_is_json(client: Client, fake: FakeTGI, waits: Waits) -> None:
    fake.script(*[Status(503, "unhealthy", "healthcheck")] * 3)
    status, body = await post(client, STREAM)
    assert status == 503 and body["code"] == "503" and waits == [1, 2]


async def test_slow_stream_arrives_whole(client: Client, fake: FakeTGI) -> None:
    fake.script(Ok(text="one two three four", token_delay=0.05))
    response = await client.post("/service_output", json=STREAM)
    assert await response.get_data(as_text=True) == "one two three four"


async def test_stream_deadline_cuts_a_slow_stream(app_for: Any, fake: FakeTGI) -> None:
    client = await app_for(env_for(fake.url, TGI_INF_STREAM_DEADLINE="0.5"))
    fake.script(Ok(text=" ".join(["w"] * 100), token_delay=0.05))
    response = await asyncio.wait_for(client.post("/service_output", json=STREAM), 10)
    text = await response.get_data(as_text=True)
    assert response.status_code == 200
    assert 0 < len(text) < len(" ".join(["w"] * 100))


@pytest.mark.parametrize(
    "body,fragment",
    [
        ({"source": 2, "destination": 1, "data": {}}, "`source`"),
        ({"destination": 1, "data": {"text": "x"}}, "`source` is required"),
        ({"source": 1, "destination": 1, "data": "abcd"}, "off-chain job data must be an object"),
        ({"source": 0, "destination": 0, "data": {"text": "x"}}, "on-chain job data must be a hex"),
        ({"source": 1, "destination": 1, "data": {"txt": "x"}}, 'needs the prompt under "text"'),
        ({"source": 1, "destination": 1, "data": {"text": 5}}, "`text`"),
        ({"source": 0, "destination": 0, "data": ""}, "on-chain input is empty"),
        ({"source": 0, "destination": 0, "data": "0x00"}, "without a 0x prefix"),
        ({"source": 0, "destination": 0, "data": "abc"}, "odd number of hex digits"),
        ({"source": 0, "destination": 0, "data": "zz"}, "not hex"),
        ({"source": 0, "destination": 0, "data": "00" * 32}, "expected a first word of 0x20"),
        ([1, 2], "job body must be a JSON object"),
    ],
)
async def test_bad_jobs_get_precise_400(client: Client, fake: FakeTGI, body: Any, fragment: str) -> None:
    status, result = await post(client, body)
    assert status == 400 and result["code"] == "400", result
    assert fragment in result["description"]
    assert fake.requests == []


@pytest.mark.parametrize(
    "parameters,message",
    [
        ({"temperature": 0.0}, "`temperature` must be strictly positive"),
        ({"top_p": 1.0}, "`top_p` must be > 0.0 and < 1.0"),
        ({"top_k": 0}, "`top_k` must be strictly positive"),
        ({"frequency_penalty": 3.0}, "`frequency_penalty` must be >= -2.0 and <= 2.0"),
        ({"max_new_tokens": 0}, "`max_new_tokens` must be strictly positive"),
        ({"max_new_tokens": 5000}, "`max_new_tokens` must be <= 2048 on this container"),
        ({"best_of": 2}, "you must use sampling when `best_of` is > 1"),
        ({"best_of": 2, "do_sample": True, "seed": 1}, "`seed` must not be set when `best_of` > 1"),
        ({"temprature": 0.5}, "unknown parameter `temprature`"),
        ({"temperature": "hot"}, "`temperature`"),
    ],
)
async def test_parameter_errors_use_tgi_messages(
    client: Client, fake: FakeTGI, parameters: dict[str, Any], message: str
) -> None:
    body = {"source": 1, "destination": 1, "data": {"text": "x", "parameters": parameters}}
    status, result = await post(client, body)
    assert status == 422 and result["code"] == "422"
    assert result["description"].startswith("Input validation error: ")
    assert message in result["description"]
    assert fake.requests == []


async def test_streaming_rejects_best_of(client: Client) -> None:
    body = {**STREAM, "data": {"text": "x", "parameters": {"best_of": 2, "do_sample": True}}}
    status, result = await post(client, body)
    assert status == 422 and "not supported when streaming" in result["description"]


async def test_oversized_prompt_and_body(app_for: Any, fake: FakeTGI) -> None:
    client = await app_for(env_for(fake.url, TGI_INF_MAX_PROMPT_CHARS="10", TGI_INF_MAX_BODY_BYTES="2000"))
    status, result = await post(client, {"source": 1, "destination": 1, "data": {"text": "x" * 11}})
    assert status == 413 and "TGI_INF_MAX_PROMPT_CHARS" in result["description"]
    status, result = await post(client, {"source": 1, "destination": 1, "data": {"text": "x" * 3000}})
    assert status == 413 and result["code"] == "413" and "TGI_INF_MAX_BODY_BYTES" in result["description"]
    assert fake.requests == []


async def test_malformed_json_body(client: Client) -> None:
    response = await client.post(
        "/service_output", data=b"{not json", headers={"content-type": "application/json"}
    )
    body = await response.get_json()
    assert response.status_code == 400 and "not valid JSON" in body["description"]


async def test_unknown_route_is_json_404(client: Client) -> None:
    response = await client.get("/nope")
    assert response.status_code == 404 and (await response.get_json())["code"] == "404"


async def test_bearer_required_when_configured(app_for: Any, fake: FakeTGI) -> None:
    client = await app_for(env_for(fake.url, TGI_INF_BEARER="s3cret-token"))
    assert (await client.get("/")).status_code == 200
    response = await client.post("/service_output", json=OFFCHAIN)
    body = await response.get_json()
    assert response.status_code == 401 and body["code"] == "401"
    assert "s3cret" not in json.dumps(body)
    wrong = await client.post("/service_output", json=OFFCHAIN, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ok = await client.post("/service_output", json=OFFCHAIN, headers={"Authorization": "Bearer s3cret-token"})
    assert ok.status_code == 200


async def test_token_goes_upstream_and_never_into_errors(app_for: Any, fake: FakeTGI) -> None:
    client = await app_for(env_for(fake.url, TGI_INF_TOKEN="12345"))
    await post(client)
    assert fake.requests[-1].headers["authorization"] == "Bearer 12345"
    fake.script(*[Status(503, "down")] * 3)
    _, body = await post(client)
    assert "12345" not in json.dumps(body)
