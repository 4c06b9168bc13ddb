"""Constrained output: response_pool, json_format and TGI grammar, translated per protocol and checked
before the answer leaves the container (localtgi's TGI and chat routes, a scripted vLLM)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from eth_abi.abi import decode, encode

from enginekit import engine_env, job, localtgi_url
from fakeengines import FakeVLLM
from infernet_tgi.constraints import Constraint, check, choice_regex, simple_json_schema, tgi_grammar
from infernet_tgi.errors import ConstraintViolationError, ParameterError

POOL = ["mathematician", "show writer", "a.b (c)|d*"]
ADA = {"name": "string", "age": "integer", "alive": "boolean", "height": "number", "kids": ["string"]}


async def run(client: Any, body: dict[str, Any]) -> tuple[int, Any]:
    response = await client.post("/service_output", json=body)
    text = await response.get_data(as_text=True)
    if response.content_type.startswith("application/json"):
        return response.status_code, json.loads(text)
    return response.status_code, text


# -- translation and checking, no server ------------------------------------------------------------


def test_simple_json_becomes_a_schema_with_every_key_required() -> None:
    schema = simple_json_schema(ADA)
    assert schema["required"] == list(ADA)
    assert schema["properties"]["kids"] == {"type": "array", "items": {"type": "string"}}
    assert schema["properties"]["age"] == {"type": "integer"}


@pytest.mark.parametrize(
    "given,fragment",
    [
        ({"response_pool": ["a"], "json_format": {"a": "string"}}, "`response_pool` and `json_format`"),
        ({"response_pool": ["a"], "grammar": {"type": "regex", "value": "a"}}, "are incompatible"),
        ({"response_pool": []}, "`response_pool` must not be empty"),
        ({"json_format": {"a": "str"}}, "`json_format` field `json_format.a` must be one of"),
        ({"json_format": {}}, "must name at least one field"),
        ({"json_format": {"type": "nope"}, "json_format_is_json_schema": True}, "not a valid JSON schema"),
        ({"json_format_is_json_schema": True}, "needs `json_format`"),
        ({"grammar": {"type": "json", "value": "{not json"}}, "`grammar` value is not JSON"),
        ({"grammar": {"type": "json_schema", "value": {"name": "x"}}}, 'needs {"schema"'),
    ],
)
def test_bad_constraints_are_precise_422s(given: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ParameterError) as info:
        Constraint.from_parameters(**given)
    assert info.value.status == 422 and fragment in str(info.value)


def test_choice_regex_matches_exactly_the_pool() -> None:
    pattern = re.compile(choice_regex(tuple(POOL)))
    assert all(pattern.fullmatch(item) for item in POOL)
    assert not pattern.fullmatch("a.b (c)") and not pattern.fullmatch("aXb (c)|d*")


def test_translations() -> None:
    pool = Constraint.from_parameters(response_pool=["yes", "no", "yes"])
    assert pool is not None and pool.choices == ("yes", "no")
    assert tgi_grammar(pool) == {"type": "regex", "value": "(yes|no)"}
    grammar = Constraint.from_parameters(grammar={"type": "json_schema", "value": {"schema": {
        "type": "object", "properties": {"a": {"type": "integer"}}}}})
    assert grammar is not None and tgi_grammar(grammar)["type"] == "json"


def test_check_accepts_valid_answers_and_names_the_problem_otherwise() -> None:
    pool = Constraint("choice", choices=("yes", "no"))
    assert check(pool, " yes\n", finish_reason="eos_token", where="u") == "yes"
    with pytest.raises(ConstraintViolationError, match="ignored the constraint"):
        check(pool, "maybe", finish_reason="eos_token", where="u")
    schema = Constraint("json", schema=simple_json_schema({"a": "integer"}))
    assert check(schema, '{"a": 1}', finish_reason=None, where="u") == '{"a": 1}'
    with pytest.raises(ConstraintViolationError, match="at a: 'x' is not of type 'integer'"):
        check(schema, '{"a": "x"}', finish_reason=None, where="u")
    with pytest.raises(ConstraintViolationError, match="cut at max_new_tokens"):
        check(schema, '{"a": 12', finish_reason="length", where="u")


async def test_constraint_keys_are_validated_in_the_job(app_for: Any) -> None:
    client = await app_for(engine_env("http://127.0.0.1:9"))
    for parameters, fragment in (
        ({"response_pool": "yes"}, "`response_pool`"),
        ({"response_pool": ["a"], "json_format": {"a": "string"}}, "are incompatible"),
        ({"json_format": {"a": 1}}, "must be one of"),
    ):
        status, body = await run(client, job({"text": "q", "parameters": parameters}))
        assert status == 422 and fragment in body["description"], body


# -- vLLM: structured_outputs from 0.12, guided_* up to 0.11 -----------------------------------------


@pytest.fixture(scope="module")
def vllm_server() -> Iterator[FakeVLLM]:
    with FakeVLLM() as server:
        yield server


@pytest.mark.parametrize("version,key", [("0.12.0", "structured_outputs"), ("0.11.2", "guided_choice")])
async def test_vllm_form_follows_its_version(
    app_for: Any, vllm_server: FakeVLLM, version: str, key: str
) -> None:
    vllm_server.version = version
    client = await app_for(engine_env(vllm_server.url, TGI_INF_UPSTREAM_KIND="openai"))
    status, body = await run(client, job({"text": "job?", "parameters": {"response_pool": POOL}}))
    assert status == 200 and body["output"] == POOL[-1], body
    sent = vllm_server.posts("/completions")[-1].body
    assert key in sent
    assert not any(k.startswith("guided_") for k in sent) or key == "guided_choice"


async def test_happy_vllm_version_comes_from_its_info_route(app_for: Any) -> None:
    with FakeVLLM(version="0.10.1", happy=True) as happy:
        client = await app_for(engine_env(happy.url, TGI_INF_UPSTREAM_KIND="openai"))
        status, body = await run(client, job({"text": "q", "parameters": {"response_pool": ["x", "y"]}}))
        assert (status, body["output"]) == (200, "y")
        assert happy.posts("/completions")[-1].body["guided_choice"] == ["x", "y"]
        assert "/v1/info" in [r.path for r in happy.requests]


async def test_vllm_json_format_answer_matches(app_for: Any, vllm_server: FakeVLLM) -> None:
    vllm_server.version = "0.13.1"
    client = await app_for(engine_env(vllm_server.url, TGI_INF_UPSTREAM_KIND="openai"))
    status, body = await run(client, job({"text": "Ada?", "parameters": {"json_format": ADA}}))
    assert status == 200, body
    assert set(json.loads(body["output"])) == set(ADA)
    sent = vllm_server.posts("/completions")[-1].body
    assert sent["structured_outputs"]["json"]["required"] == list(ADA)


async def test_upstream_that_ignores_the_constraint_is_a_clear_error(
    app_for: Any, vllm_server: FakeVLLM
) -> None:
    """vLLM >= 0.12 ignores guided_* silently; forced to the old form, the answer is unconstrained."""
    vllm_server.version = "0.12.0"
    env = engine_env(vllm_server.url, TGI_INF_UPSTREAM_KIND="openai", TGI_INF_VLLM_STRUCTURED="guided")
    client = await app_for(env)
    status, body = await run(client, job({"text": "job?", "parameters": {"response_pool": POOL}}))
    assert status == 502 and body["code"] == "502"
    assert "must be one of" in body["description"] and "ignored the constraint" in body["description"]
    assert "echo: job?" in body["description"]
    status, body = await run(client, job({"text": "job?", "parameters": {"response_pool": POOL}}, 2))
    assert status == 502 and "ignored the constraint" in body["description"]


# -- localtgi: TGI grammar on /generate, response_format on the chat route ----------------------------


@pytest.fixture(scope="module")
def tgi_url() -> str:
    return localtgi_url()


@pytest.mark.parametrize("destination", [1, 2])
async def test_localtgi_response_pool(app_for: Any, tgi_url: str, destination: int) -> None:
    client = await app_for(engine_env(tgi_url))
    parameters = {"response_pool": POOL, "max_new_tokens": 12}
    data = {"text": "Occupation of Ada?", "parameters": parameters}
    status, body = await run(client, job(data, destination))
    assert status == 200, body
    assert (body["output"] if destination == 1 else body) in POOL


async def test_localtgi_json_format_and_schema(app_for: Any, tgi_url: str) -> None:
    client = await app_for(engine_env(tgi_url))
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    for parameters in (
        {"json_format": {"ok": "boolean", "n": "integer"}},
        {"json_format": schema, "json_format_is_json_schema": True},
        {"grammar": {"type": "json", "value": json.dumps(schema)}},
    ):
        status, body = await run(
            client, job({"text": "json", "parameters": {**parameters, "max_new_tokens": 40}})
        )
        assert status == 200, (parameters, body)
        assert isinstance(json.loads(body["output"])["ok"], bool)


async def test_localtgi_regex_grammar(app_for: Any, tgi_url: str) -> None:
    client = await app_for(engine_env(tgi_url))
    grammar = {"type": "regex", "value": "[0-9]{3}-[a-z]{2}"}
    status, body = await run(client, job({"text": "code", "parameters": {"grammar": grammar}}))
    assert status == 200 and re.fullmatch("[0-9]{3}-[a-z]{2}", body["output"]), body


async def test_localtgi_chat_route_response_pool(app_for: Any, tgi_url: str) -> None:
    client = await app_for(engine_env(tgi_url))
    data = {"messages": [{"role": "user", "content": "Pick one"}], "parameters": {"response_pool": POOL}}
    status, body = await run(client, job(data))
    assert status == 200 and body["output"] in POOL, body


async def test_localtgi_onchain_parameters_json_with_a_pool(app_for: Any, tgi_url: str) -> None:
    """A contract can constrain its answer: abi.encode(prompt, '{"response_pool": [...]}')."""
    client = await app_for(engine_env(tgi_url))
    data = encode(["string", "string"], ["Yes or no?", json.dumps({"response_pool": ["yes", "no"]})]).hex()
    status, body = await run(client, {"source": 0, "destination": 0, "data": data})
    assert status == 200, body
    assert decode(["string"], bytes.fromhex(body["raw_output"]))[0] in ("yes", "no")


async def test_localtgi_truncated_json_is_reported(app_for: Any, tgi_url: str) -> None:
    client = await app_for(engine_env(tgi_url))
    parameters = {"json_format": {"name": "string", "bio": "string"}, "max_new_tokens": 3}
    status, body = await run(client, job({"text": "json", "parameters": parameters}))
    assert status == 502 and "cut at max_new_tokens" in body["description"], body
