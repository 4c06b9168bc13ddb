"""DataCrunch: TGI's generate protocol plus `model`, on `/v1/completions/generate(_stream)`, against the
scripted TGI-protocol fake."""

from __future__ import annotations

import json
from typing import Any

import pytest

from enginekit import engine_env, job
from faketgi import FakeTGI, Ok, Status
from infernet_tgi.config import Settings
from infernet_tgi.errors import ConfigError


def datacrunch_env(url: str) -> dict[str, str]:
    return engine_env(url, TGI_INF_UPSTREAM_KIND="datacrunch", TGI_INF_MODEL="llama-2-13b-chat",
                      TGI_INF_API_KEY="dc-secret")


async def run(client: Any, body: dict[str, Any]) -> tuple[int, Any]:
    response = await client.post("/service_output", json=body)
    text = await response.get_data(as_text=True)
    if response.content_type.startswith("application/json"):
        return response.status_code, json.loads(text)
    return response.status_code, text


async def test_generate_path_model_and_key(app_for: Any, fake: FakeTGI) -> None:
    client = await app_for(datacrunch_env(fake.url))
    status, body = await run(client, job({"text": "My name is Olivier and I", "parameters": {"top_k": 10}}))
    assert status == 200 and body["output"] == "echo: My name is Olivier and I", body
    sent = fake.requests[-1]
    assert sent.path == "/v1/completions/generate"
    assert sent.headers["authorization"] == "Bearer dc-secret"
    assert sent.body == {
        "model": "llama-2-13b-chat",
        "inputs": "My name is Olivier and I",
        "parameters": {"max_new_tokens": 16, "top_k": 10, "details": True},
    }


async def test_stream_path(app_for: Any, fake: FakeTGI) -> None:
    fake.script(Ok(text="photographer and more"))
    client = await app_for(datacrunch_env(fake.url))
    status, text = await run(client, job({"text": "x"}, destination=2))
    assert (status, text) == (200, "photographer and more")
    assert fake.requests[-1].path == "/v1/completions/generate_stream"
    assert fake.requests[-1].body["model"] == "llama-2-13b-chat"


async def test_constraint_is_sent_as_tgi_grammar(app_for: Any, fake: FakeTGI) -> None:
    fake.script(Ok(text="no"))
    client = await app_for(datacrunch_env(fake.url))
    status, body = await run(client, job({"text": "x", "parameters": {"response_pool": ["yes", "no"]}}))
    assert (status, body["output"]) == (200, "no")
    assert fake.requests[-1].body["parameters"]["grammar"] == {"type": "regex", "value": "(yes|no)"}


async def test_errors_keep_tgi_messages(app_for: Any, fake: FakeTGI) -> None:
    fake.script(Status(422, "Input validation error: `inputs` must have less than 4096 tokens", "validation"))
    client = await app_for(datacrunch_env(fake.url))
    status, body = await run(client, job({"text": "x"}))
    assert status == 422 and "must have less than 4096 tokens" in body["description"]


def test_datacrunch_needs_a_model() -> None:
    with pytest.raises(ConfigError, match="TGI_INF_MODEL is required when TGI_INF_UPSTREAM_KIND=datacrunch"):
        Settings.from_env({"TGI_INF_UPSTREAM_KIND": "datacrunch"})
