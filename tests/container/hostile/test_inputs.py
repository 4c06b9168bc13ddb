"""Hostile bodies and small protocol gaps (issue 8, items 3 and 8) against the running container.

Deep JSON, lone surrogates and non-finite numbers are precise 4xx JSON errors (never a 500), an
upstream answer holding a lone surrogate is a 502 (a clean stream when streaming), OPTIONS is a JSON
405 with `Allow`, and HEAD / follows GET /'s open-for-health-checks rule.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from eth_abi.abi import decode, encode

from containerkit import RunningContainer, assert_responsive, env_for, probe_while
from faketgi import FakeTGI, Ok, Status

BEARER = "s3cret-bearer"


def post(url: str, content: bytes | str, headers: dict[str, str] | None = None) -> httpx.Response:
    raw = content.encode() if isinstance(content, str) else content
    return httpx.post(
        url + "/service_output",
        content=raw,
        headers={"content-type": "application/json", **(headers or {})},
        timeout=30,
    )


def error(response: httpx.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["code"] == str(status) and body["name"]
    for fragment in fragments:
        assert fragment in body["description"], body["description"]


def engine_calls(fake: FakeTGI) -> int:
    return len([r for r in fake.requests if r.method == "POST"])


# -- item 3: deep JSON ------------------------------------------------------------------------------


def test_deep_bodies_are_400s_wherever_the_nesting_is(container: str, fake: FakeTGI) -> None:
    for depth in (65, 3_000, 100_000):
        error(post(container, "[" * depth + "]" * depth), 400, f"nested {depth} levels deep", "at most 64")
    deep_prompt = '{"source": 1, "destination": 1, "data": {"text": ' + "[" * 5000 + "]" * 5000 + "}}"
    error(post(container, deep_prompt), 400, "nested 5002 levels deep")
    # brackets inside strings do not count
    fake.script(Ok(text="fine"))
    quoted = {"source": 1, "destination": 1, "data": {"text": "[" * 5000 + '"{'}}
    assert post(container, json.dumps(quoted)).json()["output"] == "fine"
    assert engine_calls(fake) == 1


def test_an_unterminated_string_of_escaped_quotes_is_read_once(container: str, fake: FakeTGI) -> None:
    """The depth scan skips strings; an unterminated one runs to the end of the body. Trying it
    again from every escaped quote inside made the scan quadratic: this body cost hours of CPU."""
    quotes = '"' + '\\"' * 500_000 + "[" * 10  # more than 64 openers in all: the scan runs
    assert len("[" * 60 + quotes) < 1_048_576
    error(post(container, "[" * 60 + quotes), 400, "Unterminated string")
    error(post(container, "[" * 70 + quotes + '"' + "]" * 70), 400, "nested 70 levels deep")
    assert engine_calls(fake) == 0


def test_bodies_of_too_many_values_are_400s(container: str, fake: FakeTGI) -> None:
    many = {"source": 1, "destination": 1, "data": {"text": "hi", "parameters": {"stop": ["x"] * 30_000}}}
    error(post(container, json.dumps(many)), 400, "holds more than 20000 values")
    fake.script(Ok(text="fine"))
    commas = {"source": 1, "destination": 1, "data": {"text": "a," * 25_000}}  # commas in a string
    assert post(container, json.dumps(commas)).json()["output"] == "fine"


def test_event_loop_stays_free_while_megabyte_bodies_are_refused(container: str, fake: FakeTGI) -> None:
    brackets = "[" * 500_000 + "]" * 500_000
    objects = json.dumps([{"a": 1}] * 100_000)
    statuses: list[int] = []
    latencies: list[float] = []
    with ThreadPoolExecutor(6) as pool:
        for body in (brackets, objects):
            assert len(body) < 1_048_576  # under TGI_INF_MAX_BODY_BYTES: the container must parse it
            futures = [pool.submit(post, container, body) for _ in range(6)]
            latencies += probe_while(container, futures)
            statuses += [f.result().status_code for f in futures]
    assert statuses == [400] * 12
    assert_responsive(latencies)
    assert engine_calls(fake) == 0


def test_deep_onchain_parameters_json_is_a_400(container: str, fake: FakeTGI) -> None:
    for parameters in ('{"a": ' + "[" * 3000 + "]" * 3000 + "}", '{"stop": ["\\ud800"]}'):
        data = encode(["string", "string"], ["hi", parameters]).hex()
        response = post(container, json.dumps({"source": 0, "destination": 0, "data": data}))
        error(response, 400, "on-chain parametersJson refused")
    assert engine_calls(fake) == 0


# -- item 3: lone surrogates ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        '{"source": 1, "destination": 1, "data": {"text": "a\\ud800b"}}',
        '{"source": 1, "destination": 1, "data": {"text": "a\\udfffb"}}',
        '{"source": 1, "destination": 1, "data": {"messages": [{"role": "user", "content": "\\udc00"}]}}',
        '{"source": 1, "destination": 1, "data": {"text": "x", "parameters": {"stop": ["\\ud83d"]}}}',
        '{"source": 1, "destination": 1, "data": {"text": "x", "\\ud800": 1}}',
    ],
)
def test_lone_surrogates_are_400s(container: str, fake: FakeTGI, raw: str) -> None:
    error(post(container, raw), 400, "lone UTF-16 surrogate")
    assert engine_calls(fake) == 0


def test_raw_surrogate_bytes_and_bad_utf8_are_400s(container: str, fake: FakeTGI) -> None:
    body = b'{"source": 1, "destination": 1, "data": {"text": "a\xed\xa0\x80b"}}'
    error(post(container, body), 400, "not UTF-8")
    error(post(container, b'{"source": 1, "destination": 1, "data": {"text": "\xff"}}'), 400, "not UTF-8")


def test_a_surrogate_pair_is_one_character_and_passes(container: str, fake: FakeTGI) -> None:
    fake.script(Ok(text="ok"))
    response = post(container, '{"source": 1, "destination": 1, "data": {"text": "smile \\ud83d\\ude00"}}')
    assert response.status_code == 200, response.text
    assert [r for r in fake.requests if r.method == "POST"][0].body["inputs"] == "smile \U0001f600"


def test_upstream_answer_with_a_lone_surrogate_is_a_502(container: str, fake: FakeTGI) -> None:
    for destination in (1, 0):
        fake.script(Ok(text="broken \ud800 text", finish_reason="eos_token"))
        body = {"source": 1, "destination": destination, "data": {"text": "hi"}}
        error(post(container, json.dumps(body)), 502, "lone UTF-16 surrogate")


def test_upstream_answer_nested_too_deep_is_a_502(container: str, fake: FakeTGI) -> None:
    deep = b'{"generated_text": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    for destination, answer in ((1, Status(200, raw=deep)), (2, Status(200, raw=b"data:" + deep + b"\n\n"))):
        fake.script(answer)
        body = json.dumps({"source": 1, "destination": destination, "data": {"text": "hi"}})
        error(post(container, body), 502, "nested too deeply")


def test_a_stream_with_a_lone_surrogate_ends_cleanly(container: str, fake: FakeTGI) -> None:
    fake.script(Ok(text="before \ud800 after", finish_reason="eos_token"))
    body = {"source": 1, "destination": 2, "data": {"text": "hi"}}
    with httpx.stream("POST", container + "/service_output", json=body, timeout=30) as response:
        assert response.status_code == 200
        raw = b"".join(response.iter_raw())
    assert raw.decode("utf-8") == "before \ufffd after"


def test_constrained_answer_with_a_lone_surrogate_is_a_502(container: str, fake: FakeTGI) -> None:
    fake.script(Ok(text="a\ud800", finish_reason="eos_token"))
    body = {"source": 1, "destination": 1, "data": {"text": "hi", "parameters": {
        "grammar": {"type": "regex", "value": "a."}}}}
    error(post(container, json.dumps(body)), 502, "lone UTF-16 surrogate")


# -- item 3: non-finite numbers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["temperature", "repetition_penalty", "top_p", "typical_p", "frequency_penalty"]
)
@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
def test_non_finite_float_parameters_are_422s(container: str, fake: FakeTGI, name: str, number: str) -> None:
    params = '{"' + name + '": ' + number + '}'
    raw = '{"source": 1, "destination": 1, "data": {"text": "hi", "parameters": ' + params + '}}'
    error(post(container, raw), 422, f"Input validation error: `{name}` must be a finite number")
    assert engine_calls(fake) == 0


def test_non_finite_numbers_in_a_schema_and_onchain_are_refused(container: str, fake: FakeTGI) -> None:
    raw = (
        '{"source": 1, "destination": 1, "data": {"text": "hi", "parameters": '
        '{"json_format": {"type": "number", "maximum": NaN}, "json_format_is_json_schema": true}}}'
    )
    error(post(container, raw), 422, "not a finite number")
    data = encode(["string", "string"], ["hi", '{"temperature": Infinity}']).hex()
    error(post(container, json.dumps({"source": 0, "destination": 0, "data": data})), 422, "finite number")
    assert engine_calls(fake) == 0


def test_huge_integers_are_4xx(container: str, fake: FakeTGI) -> None:
    raw = '{"source": 1, "destination": 1, "data": {"text": "hi", "parameters": {"seed": SEED}}}'
    error(post(container, raw.replace("SEED", "9" * 5000)), 400, "request body refused")
    error(post(container, raw.replace("SEED", "9" * 40)), 422, "`seed`")


def test_finite_floats_still_work(container: str, fake: FakeTGI) -> None:
    fake.script(Ok(text="warm"))
    raw = '{"source": 1, "destination": 0, "data": {"text": "hi", "parameters": {"temperature": 0.7}}}'
    response = post(container, raw)
    assert response.status_code == 200, response.text
    assert decode(["string"], bytes.fromhex(response.json()["raw_output"])) == ("warm",)


# -- item 8: OPTIONS and HEAD -----------------------------------------------------------------------


def test_options_is_a_json_405_with_allow(container: str) -> None:
    for path, allowed in (("/service_output", "POST"), ("/", "GET, HEAD")):
        response = httpx.options(container + path, timeout=10)
        error(response, 405, f"allowed: {allowed}")
        assert response.headers["allow"] == allowed
    error(httpx.get(container + "/service_output", timeout=10), 405, "allowed: POST")


def test_head_follows_get_for_the_health_route(upstream: FakeTGI) -> None:
    with RunningContainer(env_for(upstream.url, TGI_INF_BEARER=BEARER)) as url:
        assert httpx.get(url + "/", timeout=10).status_code == 200
        head = httpx.head(url + "/", timeout=10)
        assert head.status_code == 200 and head.content == b""
        error(post(url, '{"source": 1, "destination": 1, "data": {"text": "hi"}}'), 401, "bearer")
        response = httpx.options(url + "/", headers={"Authorization": f"Bearer {BEARER}"}, timeout=10)
        error(response, 405)
