"""Chats on the `tgi` kind go through the model's own template (`/chat_tokenize`) to `/generate`, so
every TGI parameter works for them, also in `make run`'s default (`TGI_INF_PROMPT_AS_CHAT=true`). A TGI
without that route gets chats on its Messages API, and a parameter only /generate takes is refused with
the remedy that works there."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from enginekit import engine_env, job, localtgi_url
from faketgi import FakeTGI

GREEDY = {"max_new_tokens": 8, "do_sample": False}
# Every TGI parameter the Messages API lacks, each set so that it matters.
GENERATE_ONLY: list[dict[str, Any]] = [
    {"top_k": 5, "do_sample": True, "seed": 1},
    {"truncate": 16},
    {"typical_p": 0.9, "do_sample": True, "seed": 1},
    {"watermark": True},
    {"best_of": 2, "do_sample": True},
    {"return_full_text": True},
]


async def run(client: Any, body: dict[str, Any]) -> tuple[int, Any]:
    response = await client.post("/service_output", json=body)
    text = await response.get_data(as_text=True)
    if response.content_type.startswith("application/json"):
        return response.status_code, json.loads(text)
    return response.status_code, text


@pytest.fixture(scope="module")
def tgi_url() -> str:
    return localtgi_url()


@pytest.fixture
def old_tgi() -> Iterator[FakeTGI]:
    with FakeTGI() as server:  # no /chat_tokenize, like TGI before 2.2
        yield server


@pytest.fixture
def llama_tgi() -> Iterator[FakeTGI]:
    with FakeTGI(chat_tokenize=True, bos="<s>") as server:
        yield server


@pytest.mark.parametrize("parameters", GENERATE_ONLY, ids=lambda p: next(iter(p)))
async def test_prompt_as_chat_takes_every_tgi_parameter(
    app_for: Any, tgi_url: str, parameters: dict[str, Any]
) -> None:
    client = await app_for(engine_env(tgi_url, TGI_INF_PROMPT_AS_CHAT="true"))
    status, body = await run(
        client, job({"text": "Hello", "parameters": {"max_new_tokens": 4, **parameters}})
    )
    assert status == 200, body
    assert body["usage"]["completion_tokens"] <= 4


async def test_chat_is_the_models_template_sent_to_generate(app_for: Any, tgi_url: str) -> None:
    client = await app_for(engine_env(tgi_url, TGI_INF_PROMPT_AS_CHAT="true"))
    messages = [{"role": "user", "content": "Hello"}]
    async with httpx.AsyncClient() as http:
        rendered = (await http.post(tgi_url + "/chat_tokenize", json={"messages": messages})).json()
        prompt = rendered["templated_text"]
        direct = (
            await http.post(tgi_url + "/generate", json={"inputs": prompt, "parameters": GREEDY})
        ).json()
    status, body = await run(client, job({"text": "Hello", "parameters": GREEDY}))
    assert status == 200 and body["output"] == direct["generated_text"], body
    status, full = await run(
        client, job({"text": "Hello", "parameters": {**GREEDY, "return_full_text": True}})
    )
    assert status == 200 and full["output"] == prompt + direct["generated_text"], full
    stream_status, streamed = await run(client, job({"text": "Hello", "parameters": GREEDY}, destination=2))
    assert stream_status == 200 and streamed == direct["generated_text"]


async def test_a_template_bos_is_not_sent_twice(app_for: Any, llama_tgi: FakeTGI) -> None:
    client = await app_for(engine_env(llama_tgi.url, TGI_INF_PROMPT_AS_CHAT="true"))
    for _ in range(2):
        status, body = await run(client, job({"text": "Hi", "parameters": {"top_k": 3}}))
        assert status == 200, body
    generated = [r.body["inputs"] for r in llama_tgi.requests if r.path == "/generate"]
    assert generated == ["<|user|>Hi\n<|assistant|>\n"] * 2
    assert [r.path for r in llama_tgi.requests].count("/tokenize") == 1  # asked once


async def test_without_chat_tokenize_chats_use_the_messages_api(app_for: Any, old_tgi: FakeTGI) -> None:
    client = await app_for(engine_env(old_tgi.url, TGI_INF_PROMPT_AS_CHAT="true"))
    for _ in range(2):  # (the fake does not speak the Messages API; what it was asked is the point)
        await run(client, job({"text": "Hi", "parameters": {"max_new_tokens": 4}}))
    paths = [r.path for r in old_tgi.requests]
    assert paths == ["/chat_tokenize", "/v1/chat/completions", "/v1/chat/completions"]  # 404 remembered
    assert old_tgi.requests[-1].body["messages"] == [{"role": "user", "content": "Hi"}]


async def test_without_chat_tokenize_a_generate_only_parameter_names_the_real_remedy(
    app_for: Any, old_tgi: FakeTGI
) -> None:
    client = await app_for(engine_env(old_tgi.url, TGI_INF_PROMPT_AS_CHAT="true"))
    status, body = await run(client, job({"text": "Hi", "parameters": {"top_k": 5}}))
    assert status == 422, body
    assert "TGI_INF_CHAT_TEMPLATE" in body["description"]
    assert "TGI_INF_UPSTREAM_KIND" not in body["description"]
    # The remedy works: the container renders the chat itself and calls /generate.
    client = await app_for(
        engine_env(old_tgi.url, TGI_INF_PROMPT_AS_CHAT="true", TGI_INF_CHAT_TEMPLATE="chatml")
    )
    status, body = await run(client, job({"text": "Hi", "parameters": {"top_k": 5}}))
    assert status == 200, body
    assert old_tgi.requests[-1].path == "/generate"
