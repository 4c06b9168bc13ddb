"""The container's own TGI client against a real localtgi (tiny model): text, ABI, streams, errors."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from eth_abi.abi import decode, encode

from containerkit import env_for
from enginekit import localtgi_url
from infernet_tgi.upstream.client import HTTPClient

GREEDY = {"max_new_tokens": 12, "do_sample": False}


@pytest.fixture(scope="module")
def tgi() -> str:
    return localtgi_url()


async def run(client: Any, body: dict[str, Any]) -> tuple[int, Any]:
    response = await client.post("/service_output", json=body)
    text = await response.get_data(as_text=True)
    if response.content_type.startswith("application/json"):
        return response.status_code, json.loads(text)
    return response.status_code, text


async def test_offchain_onchain_and_stream_agree(app_for: Any, tgi: str) -> None:
    client = await app_for(env_for(tgi, TGI_INF_WORKFLOW_KW_ARGS=GREEDY))
    async with HTTPClient() as http:
        reply = await http.post(tgi + "/generate", json={"inputs": "The sky is", "parameters": GREEDY})
    direct = reply.json()

    status, off = await run(client, {"source": 1, "destination": 1, "data": {"text": "The sky is"}})
    assert status == 200 and off["output"] == direct["generated_text"]
    assert off["finish_reason"] in ("length", "eos_token", "stop_sequence")
    assert off["usage"]["completion_tokens"] >= 1 and off["usage"]["prompt_tokens"] >= 1

    data = encode(["string"], ["The sky is"]).hex()
    status, on = await run(client, {"source": 0, "destination": 0, "data": data})
    assert status == 200 and decode(["string"], bytes.fromhex(on["raw_output"])) == (off["output"],)

    status, streamed = await run(client, {"source": 1, "destination": 2, "data": {"text": "The sky is"}})
    assert status == 200 and streamed == off["output"]
    assert "</s>" not in streamed and "<|im_end|>" not in streamed


async def test_multibyte_prompt_round_trip(app_for: Any, tgi: str) -> None:
    client = await app_for(env_for(tgi, TGI_INF_WORKFLOW_KW_ARGS=GREEDY))
    data = encode(["string"], ["日本語のプロンプト 🚀"]).hex()
    status, on = await run(client, {"source": 0, "destination": 0, "data": data})
    assert status == 200
    (text,) = decode(["string"], bytes.fromhex(on["raw_output"]))
    assert isinstance(text, str)


async def test_localtgi_validation_error_is_kept(app_for: Any, tgi: str) -> None:
    client = await app_for(env_for(tgi))
    body = {"source": 1, "destination": 1, "data": {"text": "x", "parameters": {"top_n_tokens": 99}}}
    status, result = await run(client, body)
    assert status == 422 and result["code"] == "422"
    assert "`top_n_tokens` must be >= 0 and <= 5. Given: 99" in result["description"]


async def test_seeded_sampling_is_reproducible_through_the_container(app_for: Any, tgi: str) -> None:
    client = await app_for(env_for(tgi))
    params = {"do_sample": True, "temperature": 0.9, "seed": 42, "max_new_tokens": 10}
    body = {"source": 1, "destination": 1, "data": {"text": "Once", "parameters": params}}
    results = await asyncio.gather(*(run(client, body) for _ in range(3)))
    assert len({r[1]["output"] for r in results}) == 1


async def test_prompt_as_chat_uses_the_models_chat_template(app_for: Any, tgi: str) -> None:
    client = await app_for(env_for(tgi, TGI_INF_WORKFLOW_KW_ARGS=GREEDY, TGI_INF_PROMPT_AS_CHAT="true"))
    chat = {
        "model": "tgi",
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 12,
        "temperature": 0,
    }
    async with HTTPClient() as http:
        direct = (await http.post(tgi + "/v1/chat/completions", json=chat)).json()
    status, off = await run(client, {"source": 1, "destination": 1, "data": {"text": "Hello"}})
    assert status == 200, off
    assert off["output"] == direct["choices"][0]["message"]["content"]
    data = encode(["string"], ["Hello"]).hex()
    status, on = await run(client, {"source": 0, "destination": 0, "data": data})
    assert decode(["string"], bytes.fromhex(on["raw_output"])) == (off["output"],)
