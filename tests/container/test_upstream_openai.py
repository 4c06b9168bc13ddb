"""OpenAI-compatible upstreams through the real app: a scripted vLLM on loopback (dialect, framing,
errors, usage) and localtgi's TGI-flavoured `/v1` routes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from enginekit import engine_env, job, localtgi_url
from fakeengines import FakeVLLM, Framing, Reply


@pytest.fixture(scope="module")
def vllm_server() -> Iterator[FakeVLLM]:
    with FakeVLLM(api_key="sk-test") as server:
        yield server


@pytest.fixture
def vllm(vllm_server: FakeVLLM) -> FakeVLLM:
    vllm_server.requests.clear()
    vllm_server.framing = Framing()
    vllm_server.status = None
    vllm_server.version = "0.12.0"
    return vllm_server


def openai_env(url: str, **extra: Any) -> dict[str, str]:
    return engine_env(url + "/v1", TGI_INF_UPSTREAM_KIND="openai", TGI_INF_API_KEY="sk-test", **extra)


async def run(client: Any, body: dict[str, Any]) -> tuple[int, Any]:
    response = await client.post("/service_output", json=body)
    text = await response.get_data(as_text=True)
    if response.content_type.startswith("application/json"):
        return response.status_code, json.loads(text)
    return response.status_code, text


async def test_prompt_job_goes_to_completions_with_translated_parameters(
    app_for: Any, vllm: FakeVLLM
) -> None:
    client = await app_for(openai_env(vllm.url))
    status, body = await run(client, job({"text": "hello there", "parameters": {"seed": 3, "top_k": 5}}))
    assert status == 200, body
    assert body == {
        "output": "echo: hello there",
        "finish_reason": "eos_token",
        "usage": {"prompt_tokens": 2, "completion_tokens": 3},
    }
    sent = vllm.posts("/v1/completions")[-1]
    assert sent.headers["authorization"] == "Bearer sk-test"
    # model discovered from /v1/models; top_k makes it a sampling request, so temperature is TGI's 1.0
    assert sent.body == {
        "model": "fake/vllm-model",
        "prompt": "hello there",
        "max_tokens": 16,
        "temperature": 1.0,
        "seed": 3,
        "top_k": 5,
    }


async def test_chat_job_goes_to_chat_completions(app_for: Any, vllm: FakeVLLM) -> None:
    client = await app_for(openai_env(vllm.url, TGI_INF_MODEL="fake/vllm-model"))
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "sky colour?"}]
    status, body = await run(client, job({"messages": messages, "parameters": {"stop": ["###"]}}))
    assert status == 200, body
    assert body["output"] == "echo: sky colour?"
    assert body["finish_reason"] == "stop_sequence"  # vLLM: finish "stop" with a stop_reason
    sent = vllm.posts("/v1/chat/completions")[-1].body
    assert sent["messages"] == messages and sent["stop"] == ["###"] and sent["temperature"] == 0.0


@pytest.mark.parametrize(
    "framing",
    [
        Framing(),
        Framing(space=False),
        Framing(done=False),
        Framing(keepalive=True),
        Framing(crlf=True, space=False, done=False),
    ],
    ids=["vllm", "no-space", "no-done", "keepalive", "crlf"],
)
async def test_stream_framings(app_for: Any, vllm: FakeVLLM, framing: Framing) -> None:
    vllm.framing = framing
    client = await app_for(openai_env(vllm.url))
    status, text = await run(client, job({"text": "one two three"}, destination=2))
    assert (status, text) == (200, "echo: one two three")
    assert vllm.posts()[-1].body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    "style,after,expected_status,fragment",
    [
        ("nested", 0, 502, "engine died"),
        ("flat", 0, 422, "bad thing"),
    ],
)
async def test_in_stream_error_before_first_token_is_an_http_error(
    app_for: Any, vllm: FakeVLLM, style: str, after: int, expected_status: int, fragment: str
) -> None:
    vllm.framing = Framing(error_after=after, error_style=style)
    client = await app_for(openai_env(vllm.url))
    status, body = await run(client, job({"text": "a b c"}, destination=2))
    assert status == expected_status and fragment in body["description"], body


async def test_in_stream_error_after_tokens_ends_the_stream(app_for: Any, vllm: FakeVLLM) -> None:
    vllm.framing = Framing(error_after=2)
    client = await app_for(openai_env(vllm.url))
    status, text = await run(client, job({"text": "a b c"}, destination=2))
    assert (status, text) == (200, "echo: a")


async def test_upstream_errors_keep_their_message(app_for: Any, vllm: FakeVLLM) -> None:
    client = await app_for(openai_env(vllm.url, TGI_INF_MODEL="not-served"))
    status, body = await run(client, job({"text": "x"}))
    assert status == 502 and "The model `not-served` does not exist." in body["description"]
    vllm.status = Reply.json({"object": "error", "message": "too long", "type": "BadRequestError",
                              "code": 400}, 400)
    status, body = await run(client, job({"text": "x"}))
    assert status == 422 and "too long" in body["description"]


async def test_wrong_api_key_is_reported(app_for: Any, vllm: FakeVLLM) -> None:
    env = openai_env(vllm.url, TGI_INF_MODEL="fake/vllm-model")
    env["TGI_INF_API_KEY"] = "wrong"
    client = await app_for(env)
    status, body = await run(client, job({"text": "x"}))
    assert status == 502 and "401" in body["description"] and "wrong" not in body["description"]


async def test_service_resources_names_the_openai_model(app_for: Any, vllm: FakeVLLM) -> None:
    client = await app_for(openai_env(vllm.url))
    body = await (await client.get("/service-resources")).get_json()
    capability = body["compute_capability"][0]
    assert capability["models"][0]["manifest"]["model_id"] == "fake/vllm-model"
    assert capability["inference_engine_version"] == "0.12.0"
    assert capability["inference_engine"] == "vllm"


# -- localtgi's OpenAI routes (TGI's Messages API and /v1/completions) --------------------------------


@pytest.fixture(scope="module")
def tgi_url() -> str:
    return localtgi_url()


async def test_localtgi_openai_routes_prompt_chat_and_stream(app_for: Any, tgi_url: str) -> None:
    client = await app_for(engine_env(tgi_url + "/v1", TGI_INF_UPSTREAM_KIND="openai"))
    status, prompt = await run(client, job({"text": "The sky is", "parameters": {"max_new_tokens": 6}}))
    assert status == 200, prompt
    assert prompt["usage"]["completion_tokens"] == 6 and prompt["finish_reason"] == "length"
    assert prompt["usage"]["prompt_tokens"] > 0
    again = (await run(client, job({"text": "The sky is", "parameters": {"max_new_tokens": 6}})))[1]
    assert again["output"] == prompt["output"]  # greedy: temperature 0 accepted by TGI's /v1 routes
    chat = job({"messages": [{"role": "user", "content": "hi"}], "parameters": {"max_new_tokens": 5}})
    status, answer = await run(client, chat)
    assert status == 200 and answer["usage"]["completion_tokens"] == 5, answer
    status, streamed = await run(client, {**chat, "destination": 2})
    assert status == 200 and streamed == answer["output"]
