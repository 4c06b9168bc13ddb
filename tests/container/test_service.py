"""Every job shape an Infernet node 1.x sends, through the real app against the fake TGI."""

from __future__ import annotations

import json
from typing import Any

import pytest
from eth_abi.abi import decode, encode
from quart.typing import TestClientProtocol as Client

from containerkit import env_for
from faketgi import FakeTGI, Ok

SEED_PROMPT = "Is the sky blue during a clear day?"


def onchain_hex(*values: str) -> str:
    return encode(["string"] * len(values), list(values)).hex()


async def post(client: Client, body: Any) -> tuple[int, Any, str]:
    response = await client.post("/service_output", json=body)
    raw = await response.get_data(as_text=True)
    assert response.content_type.startswith("application/json"), raw
    return response.status_code, json.loads(raw), raw


async def test_health_and_reference_message(client: Client) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert await response.get_json() == {"message": "Lightweight TGI Client Inference Service"}


@pytest.mark.parametrize("requires_proof", ["absent", False])
async def test_offchain_text(client: Client, fake: FakeTGI, requires_proof: Any) -> None:
    body: dict[str, Any] = {"source": 1, "destination": 1, "data": {"text": SEED_PROMPT}}
    if requires_proof != "absent":
        body["requires_proof"] = requires_proof
    status, result, _ = await post(client, body)
    assert status == 200
    assert result == {
        "output": f"echo: {SEED_PROMPT}",
        "finish_reason": "length",
        "usage": {"prompt_tokens": 8, "completion_tokens": 9},
    }
    sent = fake.requests[-1]
    assert sent.path == "/generate"
    assert sent.body == {"inputs": SEED_PROMPT, "parameters": {"max_new_tokens": 16, "details": True}}


async def test_offchain_prompt_key_and_parameters_merge(client: Client, fake: FakeTGI) -> None:
    status, result, _ = await post(
        client,
        {
            "source": 1,
            "destination": 1,
            "data": {"prompt": "hi", "parameters": {"temperature": 0.5, "stop": ["\n"], "seed": 7}},
            "requires_proof": False,
        },
    )
    assert status == 200 and result["output"] == "echo: hi"
    assert fake.requests[-1].body["parameters"] == {
        "max_new_tokens": 16,
        "temperature": 0.5,
        "stop": ["\n"],
        "seed": 7,
        "details": True,
    }


async def test_chained_container_input(client: Client, fake: FakeTGI) -> None:
    previous_output = {"output": "summarise this", "finish_reason": "length"}
    status, result, _ = await post(client, {"source": 1, "destination": 1, "data": previous_output})
    assert status == 200 and result["output"] == "echo: summarise this"


async def test_onchain_subscription_five_keys(client: Client, fake: FakeTGI) -> None:
    data = onchain_hex(SEED_PROMPT)
    status, result, _ = await post(
        client, {"source": 0, "destination": 0, "data": data, "requires_proof": False}
    )
    assert status == 200
    assert set(result) == {"raw_input", "processed_input", "raw_output", "processed_output", "proof"}
    assert result["raw_input"] == data
    assert (result["processed_input"], result["processed_output"], result["proof"]) == ("", "", "")
    assert decode(["string"], bytes.fromhex(result["raw_output"])) == (f"echo: {SEED_PROMPT}",)
    assert fake.requests[-1].body["inputs"] == SEED_PROMPT


async def test_onchain_with_parameters_json(client: Client, fake: FakeTGI) -> None:
    data = onchain_hex("hello", json.dumps({"max_new_tokens": 5, "top_k": 3}))
    status, _, _ = await post(client, {"source": 0, "destination": 0, "data": data})
    assert status == 200
    assert fake.requests[-1].body["parameters"] == {"max_new_tokens": 5, "top_k": 3, "details": True}


async def test_onchain_source_offchain_destination(client: Client) -> None:
    """The first container of a chained on-chain job gets hex in and answers JSON for the next one."""
    status, result, _ = await post(client, {"source": 0, "destination": 1, "data": onchain_hex("a")})
    assert status == 200 and result["output"] == "echo: a"


async def test_delegated_subscription(client: Client) -> None:
    status, result, _ = await post(
        client, {"source": 1, "destination": 0, "data": {"text": "delegated"}, "requires_proof": False}
    )
    assert status == 200
    assert decode(["string"], bytes.fromhex(result["raw_input"])) == ("delegated",)
    assert decode(["string"], bytes.fromhex(result["raw_output"])) == ("echo: delegated",)
    for key in ("raw_input", "raw_output"):
        assert len(result[key]) % 2 == 0 and not result[key].startswith("0x")


async def test_stream_job_sends_raw_text_without_special_tokens(client: Client, fake: FakeTGI) -> None:
    fake.script(Ok(text="the sky is blue"))
    response = await client.post(
        "/service_output", json={"source": 1, "destination": 2, "data": {"text": "sky?"}}
    )
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    assert await response.get_data(as_text=True) == "the sky is blue"
    assert fake.requests[-1].path == "/generate_stream"


@pytest.mark.parametrize("source,data", [(1, {"text": "x"}), (0, onchain_hex("x"))])
async def test_requires_proof_is_a_clear_400(client: Client, fake: FakeTGI, source: int, data: Any) -> None:
    status, result, _ = await post(
        client, {"source": source, "destination": 1, "data": data, "requires_proof": True}
    )
    assert status == 400
    assert result["code"] == "400" and result["name"] == "Bad Request"
    assert "Proofs are not supported for TGI Client Inference Service" in result["description"]
    assert fake.requests == []


async def test_service_resources_reports_upstream_model(client: Client) -> None:
    response = await client.get("/service-resources")
    body = await response.get_json()
    capability = body["compute_capability"][0]
    assert [m["repo_id"] for m in capability["models"]] == ["huggingface/fake/tgi-model"]
    assert capability["models"][0]["manifest"]["model_id"] == "fake/tgi-model"
    assert capability["inference_engine_version"] == "3.3.6"
    yes = await (await client.get("/service-resources?model_id=fake/tgi-model")).get_json()
    no = await (await client.get("/service-resources?model_id=other")).get_json()
    assert (yes, no) == ({"supported": True}, {"supported": False})


async def test_service_resources_when_upstream_down(app_for: Any) -> None:
    client = await app_for(env_for("http://127.0.0.1:9"))
    body = await (await client.get("/service-resources")).get_json()
    assert body["compute_capability"][0]["models"] == []


async def test_metrics_count_jobs_by_outcome(client: Client) -> None:
    await post(client, {"source": 1, "destination": 1, "data": {"text": "a"}})
    await post(client, {"source": 1, "destination": 1, "data": {"nope": "a"}})
    text = await (await client.get("/metrics")).get_data(as_text=True)
    assert 'infernet_tgi_jobs_total{destination="offchain",outcome="ok",source="offchain"} 1.0' in text
    assert 'infernet_tgi_jobs_total{destination="offchain",outcome="400",source="offchain"} 1.0' in text
    assert "infernet_tgi_upstream_latency_seconds_bucket" in text
    assert "infernet_tgi_jobs_in_flight 0.0" in text


async def test_operator_defaults_are_checked_once_and_every_job_gets_its_own_copy(
    app_for: Any, fake: FakeTGI
) -> None:
    # Defaults TGI refuses on streams only (best_of > 1): off-chain jobs pass, every stream job
    # is refused, the second as the first (a refusal is not cached as a success).
    kw = {"max_new_tokens": 16, "best_of": 2, "do_sample": True}
    client = await app_for(env_for(fake.url, TGI_INF_WORKFLOW_KW_ARGS=kw))
    stream_job = {"source": 1, "destination": 2, "data": {"text": "a"}}
    for _ in range(2):
        status, result, _ = await post(client, {"source": 1, "destination": 1, "data": {"text": "a"}})
        assert status == 200 and result["output"] == "echo: a"
        assert fake.requests[-1].body["parameters"] == {
            "max_new_tokens": 16, "best_of": 2, "do_sample": True, "details": True
        }
        status, result, _ = await post(client, stream_job)
        assert status == 422
        assert "`best_of` != 1 is not supported when streaming tokens" in result["description"]
    # a job's own parameters still merge over the defaults, and leave the next job's untouched
    own = {"text": "b", "parameters": {"best_of": 1, "seed": 3}}
    status, _, _ = await post(client, {"source": 1, "destination": 1, "data": own})
    assert status == 200 and fake.requests[-1].body["parameters"]["seed"] == 3
    await post(client, {"source": 1, "destination": 1, "data": {"text": "c"}})
    assert "seed" not in fake.requests[-1].body["parameters"]
