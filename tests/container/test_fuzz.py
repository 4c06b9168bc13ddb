"""Whatever a caller sends, the running container answers JSON with a precise status: never a 500.

Random bodies go over real HTTP to the container process (hypercorn on loopback, a loopback TGI
behind it): deep nesting, lone surrogates, huge and non-finite numbers, wrong types in every field,
random and near-valid hex. Every answer must be a JSON error with a 4xx status (or 502/503/504 for
an upstream cause: here, an echo that breaks the job's constraint), or a well-formed success, and
must come back within the client's timeout.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from eth_abi.abi import encode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from containerkit import RunningContainer, env_for
from faketgi import FakeTGI


@dataclass(frozen=True)
class Raw:
    """JSON text written as is: numbers Python's json would not produce, or very deep nesting."""

    text: str


def to_json(value: Any) -> str:
    """`value` as JSON text, `Raw` pieces verbatim, strings ASCII-escaped (so lone surrogates go out
    as `\\udXXX` escapes, exactly as a hostile client would send them)."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(to_json(v) for v in value) + "]"
    return json.dumps(value)  # NaN and Infinity come out as the non-standard tokens


def encodable(text: str) -> str:
    """ABI strings are UTF-8 bytes: a lone surrogate cannot get on chain, only its escape can."""
    return text.encode("utf-8", "replace").decode()


surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
texts = st.text(max_size=12) | st.lists(st.text(max_size=4) | surrogates, max_size=4).map("".join)
odd_numbers = st.sampled_from(
    ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e-999", "9" * 5000, "-0", "1E400", "0.0"]
).map(Raw)
deep = st.integers(1, 4000).flatmap(
    lambda n: st.sampled_from([Raw("[" * n + "]" * n), Raw('{"a": ' * n + "1" + "}" * n)])
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | texts
    | odd_numbers
)
values = st.recursive(
    scalars | deep,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
PARAMETER_NAMES = [
    "best_of", "decoder_input_details", "details", "do_sample", "max_new_tokens", "repetition_penalty",
    "frequency_penalty", "return_full_text", "seed", "stop", "stop_sequences", "temperature", "top_k",
    "top_p", "truncate", "typical_p", "watermark", "top_n_tokens", "grammar", "adapter_id",
    "response_pool", "json_format", "json_format_is_json_schema", "bogus",
]
schemas = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["object", "string", "array", "integer"]) | values,
        "$ref": st.sampled_from(["#", "#/$defs/a", "http://127.0.0.1:9/x", "file:///etc/passwd"]) | texts,
        "pattern": st.sampled_from(["(a+)+b", "(a)\\1", "(?=a)", "(", "^a*$"]) | texts,
        "$defs": st.fixed_dictionaries({"a": st.just({"$ref": "#/$defs/a"}) | values}),
        "properties": st.dictionaries(texts, values, max_size=2),
        "maximum": scalars,
    },
)
grammars = st.fixed_dictionaries(
    {"type": st.sampled_from(["regex", "json", "json_object", "json_schema", "bogus"]) | values},
    optional={"value": schemas | texts | st.sampled_from(["(a+)+b", "(a)\\1", "a|b"]) | values},
)
parameter_values = values | schemas | grammars | odd_numbers
parameters = st.dictionaries(st.sampled_from(PARAMETER_NAMES), parameter_values, max_size=4)
messages = st.lists(
    st.fixed_dictionaries({"role": texts | values, "content": texts | values}) | values, max_size=3
)
offchain = st.fixed_dictionaries(
    {},
    optional={
        "text": texts | values,
        "prompt": texts | values,
        "output": texts | values,
        "messages": messages | values,
        "parameters": parameters | values,
    },
)
parameters_json = (parameters | values).map(to_json) | texts | deep.map(lambda raw: raw.text)
onchain = (
    st.text(alphabet="0123456789abcdefABCDEFxX", max_size=140)
    | st.binary(max_size=96).map(bytes.hex)
    | texts.map(lambda t: encode(["string"], [encodable(t)]).hex())
    | parameters_json.map(lambda p: encode(["string", "string"], ["hi", encodable(p)]).hex())
    | st.binary(max_size=64).map(lambda b: "0x" + b.hex())
)
bodies = (
    st.fixed_dictionaries(
        {},
        optional={
            "source": st.sampled_from([0, 1, 2, -1, "1", None, 1.0, True]) | scalars,
            "destination": st.sampled_from([0, 1, 2, 3, "0", None, False]) | scalars,
            "data": offchain | onchain | values,
            "requires_proof": st.sampled_from([True, False, None, "yes", 0]) | scalars,
        },
    )
    | values
).map(to_json) | st.binary(max_size=40).map(lambda b: b.decode("latin-1"))


@pytest.fixture(scope="module")
def container() -> Iterator[str]:
    with FakeTGI() as upstream, RunningContainer(env_for(upstream.url)) as url:
        yield url


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=20) as session:
        yield session


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies)
def test_any_body_gets_json_and_a_precise_status(container: str, client: httpx.Client, body: str) -> None:
    raw = body.encode("utf-8", "surrogatepass")
    response = client.post(
        container + "/service_output", content=raw, headers={"content-type": "application/json"}
    )
    status = response.status_code
    assert status == 200 or 400 <= status < 500 or status in (502, 503, 504), (status, response.text)
    if response.headers["content-type"].startswith("application/json"):
        payload = response.json()
        if status != 200:
            assert payload["code"] == str(status) and payload["description"], payload
        elif "raw_output" in payload:
            assert set(payload) == {"raw_input", "processed_input", "raw_output", "processed_output", "proof"}
            for value in payload.values():
                assert len(value) % 2 == 0 and not value.startswith("0x")
        else:
            assert isinstance(payload["output"], str)
    else:
        assert status == 200 and response.headers["content-type"].startswith("text/plain")
        response.content.decode("utf-8")  # a stream is valid UTF-8 from the first byte to the last
