"""TGI's validation rules and messages, request parsing, and the launcher settings (no server)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from localtgi import json_bodies
from localtgi.cli import parse_settings
from localtgi.errors import RequestBodyError, SettingsError, ValidationError
from localtgi.models import LoadedModel
from localtgi.protocol import (
    ChatRequest,
    CompatGenerateRequest,
    CompletionRequest,
    GenerateParameters,
    GenerateRequest,
    parse_body,
)
from localtgi.serving_openai import chat_parameters, completion_parameters
from localtgi.settings import Limits, Settings
from localtgi.validation import Validator, check_best_of, check_stream

LIMITS = Limits(max_input_tokens=16, max_total_tokens=32)


@pytest.fixture(scope="module")
def validator(tiny_model: LoadedModel) -> Validator:
    tok = tiny_model.tokenizer

    def encode(text: str, special: bool) -> list[int]:
        return tok.encode(text, add_special_tokens=special)

    return Validator(LIMITS, encode)


def params(**kw: Any) -> GenerateParameters:
    return GenerateParameters.model_validate(kw)


LONG = "word " * 40  # more than 16 tokens with the tiny tokenizer

CASES: list[tuple[str, dict[str, Any], str]] = [
    ("hi", {"best_of": 2}, "you must use sampling when `best_of` is > 1"),
    ("hi", {"temperature": 0}, "`temperature` must be strictly positive"),
    ("hi", {"temperature": -1.5}, "`temperature` must be strictly positive"),
    ("hi", {"repetition_penalty": 0}, "`repetition_penalty` must be strictly positive"),
    ("hi", {"frequency_penalty": 2.5}, "`frequency_penalty` must be >= -2.0 and <= 2.0"),
    ("hi", {"frequency_penalty": -2.01}, "`frequency_penalty` must be >= -2.0 and <= 2.0"),
    ("hi", {"top_p": 1.0}, "`top_p` must be > 0.0 and < 1.0"),
    ("hi", {"top_p": 0}, "`top_p` must be > 0.0 and < 1.0"),
    ("hi", {"typical_p": 1.0}, "`typical_p` must be > 0.0 and < 1.0"),
    ("hi", {"top_k": 0}, "`top_k` must be strictly positive"),
    ("hi", {"top_k": -3}, "`top_k` must be strictly positive"),
    ("hi", {"max_new_tokens": 0}, "`max_new_tokens` must be strictly positive"),
    ("hi", {"stop": ["a", "b", "c", "d", "e"]}, "`stop` supports up to 4 stop sequences. Given: 5"),
    ("hi", {"best_of": 2, "do_sample": True, "seed": 3}, "`seed` must not be set when `best_of` > 1"),
    ("hi", {"top_n_tokens": 6}, "`top_n_tokens` must be >= 0 and <= 5. Given: 6"),
    ("", {}, "`inputs` cannot be empty"),
    ("hi", {"truncate": 0}, "`truncate` must be strictly positive and less than 16. Given: 0"),
    ("hi", {"truncate": 17}, "`truncate` must be strictly positive and less than 16. Given: 17"),
    ("Hello", {"max_new_tokens": 40},
     "`inputs` tokens + `max_new_tokens` must be <= 32. Given: 1 `inputs` tokens and 40 "
     "`max_new_tokens`"),
    ("hi", {"grammar": {"type": "json", "value": {"type": "object"}}},
     "grammar is not valid: Grammar must have a 'properties' field"),
    ("hi", {"grammar": {"type": "json", "value": "{not json"}},
     "grammar is not valid: Expecting property name enclosed in double quotes: line 1 column 2 "
     "(char 1)"),
    ("hi", {"grammar": {"type": "json", "value": [1]}}, "grammar is not supported"),
    ("hi", {"grammar": {"type": "json", "value": {"type": 5, "properties": {}}}},
     "grammar is not valid: 5 is not valid under any of the given schemas"),
    # TGI checks in this order: the first broken rule is the one reported.
    ("", {"temperature": 0, "top_k": 0}, "`temperature` must be strictly positive"),
]


@pytest.mark.parametrize(("inputs", "parameters", "message"), CASES)
def test_validation_messages(
    validator: Validator, inputs: str, parameters: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError) as info:
        validator.validate(inputs, params(**parameters))
    assert info.value.message == message


def test_input_length_message(validator: Validator) -> None:
    n = len(validator._tokenize(LONG, True))
    assert n > 16
    with pytest.raises(ValidationError) as info:
        validator.validate(LONG, params(max_new_tokens=1))
    # TGI checks the total first: 41 + 1 > 32.
    assert info.value.message == (
        f"`inputs` tokens + `max_new_tokens` must be <= 32. Given: {n} `inputs` tokens and 1 "
        "`max_new_tokens`"
    )
    with pytest.raises(ValidationError) as info:
        validator.validate(LONG, params())  # null max_new_tokens: nothing left of the total
    assert info.value.message.endswith(f"Given: {n} `inputs` tokens and 0 `max_new_tokens`")
    with pytest.raises(ValidationError) as info:
        Validator(Limits(16, 1000), validator._tokenize).validate(LONG, params(max_new_tokens=1))
    assert info.value.message == f"`inputs` must have less than 16 tokens. Given: {n}"


def test_best_of_limits() -> None:
    assert check_best_of(None, LIMITS) == 1
    assert check_best_of(2, LIMITS) == 2
    with pytest.raises(ValidationError, match=r"^`best_of` must be > 0 and <= 2. Given: 3$"):
        check_best_of(3, LIMITS)
    one = Limits(16, 32, max_best_of=1)
    with pytest.raises(ValidationError, match="^`best_of` != 1 is not allowed for this endpoint$"):
        check_best_of(2, one)


def test_stream_rules() -> None:
    with pytest.raises(ValidationError, match="^`best_of` != 1 is not supported when streaming"):
        check_stream(params(best_of=2))
    with pytest.raises(ValidationError, match="^`decoder_input_details` == true is not supported"):
        check_stream(params(decoder_input_details=True))
    check_stream(params(best_of=1))


def test_sampling_decision(validator: Validator) -> None:
    # `parameters` omitted: TGI defaults do_sample to true; `{}`: greedy.
    omitted = GenerateRequest.model_validate({"inputs": "hi"})
    empty = GenerateRequest.model_validate({"inputs": "hi", "parameters": {}})
    assert validator.validate("hi", omitted.parameters).params.do_sample is True
    assert validator.validate("hi", empty.parameters).params.do_sample is False
    # The model server samples when a warper changes the distribution even without do_sample.
    for warper in ({"temperature": 0.7}, {"top_k": 5}, {"top_p": 0.9}, {"typical_p": 0.5}):
        assert validator.validate("hi", params(**warper)).params.do_sample is True, warper
    assert validator.validate("hi", params(temperature=1.0)).params.do_sample is False


def test_defaults_truncate_and_max_new_tokens(validator: Validator) -> None:
    v = validator.validate("hi", params())
    assert v.params.max_new_tokens == 32 - v.input_length  # null = up to max_total_tokens
    big = Validator(Limits(4095, 4096), validator._tokenize)
    assert big.validate("hi", params()).params.max_new_tokens == 4096 - v.input_length
    with pytest.raises(ValidationError, match="Given: 2 `inputs` tokens and 4095 `max_new_tokens`"):
        big.validate("hi", params(max_new_tokens=4095))  # an explicit value is checked whole
    full = validator._tokenize(LONG, True)
    t = validator.validate(LONG, params(truncate=5, max_new_tokens=3))
    assert t.input_ids == tuple(full[-5:])  # TGI keeps the last tokens
    assert t.params.max_new_tokens == 3
    s = validator.validate(
        "hi",
        params(temperature=0.5, top_k=3, top_p=0.9, typical_p=0.8, repetition_penalty=1.2,
               frequency_penalty=0.5, seed=7, stop=["x"], top_n_tokens=2, watermark=True),
    ).params
    assert (s.temperature, s.top_k, s.top_p, s.typical_p) == (0.5, 3, 0.9, 0.8)
    assert (s.repetition_penalty, s.frequency_penalty, s.seed) == (1.2, 0.5, 7)
    assert (s.stop, s.top_n_tokens, s.watermark) == (("x",), 2, True)


def test_grammar_forms(validator: Validator) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    for grammar in (
        {"type": "json", "value": schema},
        {"type": "json_object", "value": json.dumps(schema)},
        {"type": "json_schema", "value": {"name": "x", "schema": schema}},
    ):
        spec = validator.validate("hi", params(grammar=grammar)).params.grammar
        assert spec is not None and spec.kind == "json" and spec.value == schema
    regex = validator.validate("hi", params(grammar={"type": "regex", "value": "[0-9]+"}))
    assert regex.params.grammar is not None and regex.params.grammar.kind == "regex"


@pytest.mark.parametrize(
    ("body", "content_type", "status", "text"),
    [
        (b'{"inputs": "x"', "application/json", 400, "Failed to parse the request body as JSON: "),
        (b'{"inputs": "x"}', None, 415, "Expected request with `Content-Type: application/json`"),
        (b'{"inputs": "x"}', "text/plain", 415, "Expected request with `Content-Type: applic"),
        (b'{"inputs": 5}', "application/json", 422,
         "Failed to deserialize the JSON body into the target type: inputs: "),
        (b'{"inputs": "x", "parameters": {"max_new_tokens": -1}}', "application/json", 422,
         "Failed to deserialize the JSON body into the target type: parameters.max_new_tokens"),
        (b'{"inputs": "x", "parameters": {"max_new_tokens": "5"}}', "application/json", 422,
         "Failed to deserialize the JSON body into the target type: parameters.max_new_tokens"),
        (b'{"inputs": "x", "parameters": null}', "application/json", 422,
         "Failed to deserialize the JSON body into the target type: parameters"),
        (b'{"inputs": "' + b"x" * 100 + b'"}', "application/json", 413,
         "Failed to buffer the request body: length limit exceeded"),
        # Not JSON as TGI's parser reads it: syntax errors, not values that fail in generation.
        (b'{"inputs": "x", "parameters": {"temperature": NaN}}', "application/json", 400,
         "Failed to parse the request body as JSON: NaN is not JSON"),
        (b'{"inputs": "x", "parameters": {"top_p": -Infinity}}', "application/json", 400,
         "Failed to parse the request body as JSON: -Infinity is not JSON"),
        (b'{"inputs": "\\ud800 x"}', "application/json", 400,
         "Failed to parse the request body as JSON: lone surrogate in a \\u escape"),
        (b'{"inputs": "x", "stop": ["\\udfff"]}', "application/json", 400,
         "Failed to parse the request body as JSON: lone surrogate"),
        (b'{"inputs": "x\xed\xa0\x80"}', "application/json", 400,
         "Failed to parse the request body as JSON: "),
    ],
)
def test_parse_body_rejections(
    body: bytes, content_type: str | None, status: int, text: str
) -> None:
    with pytest.raises(RequestBodyError) as info:
        parse_body(GenerateRequest, body, content_type, limit=100)
    assert info.value.status == status
    assert info.value.message.startswith(text)


@pytest.mark.parametrize("depth", [129, 100_000])
def test_parse_body_refuses_nesting_deeper_than_serde_json_reads(depth: int) -> None:
    """Checked before parsing: json.loads recurses in C and, with a raised recursion limit,
    a deep body overflows the stack (it crashed this test suite's process)."""
    deep = b'{"inputs": "x", "extra": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"
    with pytest.raises(RequestBodyError) as info:
        parse_body(GenerateRequest, deep, "application/json", limit=1_000_000)
    assert info.value.status == 400
    assert info.value.message == "Failed to parse the request body as JSON: recursion limit exceeded"


def test_nesting_is_counted_outside_strings_in_one_pass() -> None:
    inside = b'{"inputs": "' + b"[" * 500 + b'\\"{{", "extra": [[1]]}'
    assert json_bodies.deeper_than(inside, 2) and not json_bodies.deeper_than(inside, 3)
    assert parse_body(GenerateRequest, inside, "application/json", limit=10_000).inputs.startswith("[[")
    at_limit = b'{"inputs": "x", "extra": ' + b"[" * 127 + b"]" * 127 + b"}"
    assert parse_body(GenerateRequest, at_limit, "application/json", limit=10_000).inputs == "x"
    # An unterminated string of escaped quotes is read once to the end, not from each quote again
    # (a regex retried at every quote made this quadratic: hours for a megabyte).
    quotes = b"[" * 100 + b'"' + b'\\"' * 500_000 + b"[" * 100
    started = time.process_time()
    assert json_bodies.deeper_than(quotes, 99) and not json_bodies.deeper_than(quotes, 100)
    assert time.process_time() - started < 5


def test_parse_body_reads_surrogate_pairs_and_escaped_backslashes() -> None:
    """A pair of surrogate escapes is one character; `\\\\ud800` is a backslash and text."""
    req = parse_body(GenerateRequest, b'{"inputs": "\\ud83d\\ude00 \\\\ud800"}', "application/json",
                     limit=1000)
    assert req.inputs == "\U0001f600 \\ud800"


def test_parse_body_accepts_tgi_shapes() -> None:
    req = parse_body(
        CompatGenerateRequest,
        b'{"inputs":"x","stream":true,"unknown":1,"parameters":{"temperature":1}}',
        "application/json; charset=utf-8",
        limit=1000,
    )
    assert req.stream and req.parameters.temperature == 1.0 and not req.parameters.do_sample


def test_chat_mapping() -> None:
    req = ChatRequest.model_validate(
        {"messages": [{"role": "user", "content": "hi"}], "temperature": 0,
         "presence_penalty": 0.5, "max_completion_tokens": 7, "top_p": 1.0, "top_logprobs": 2,
         "stop": "x", "response_format": {"type": "json_object", "value": {"properties": {}}}}
    )
    p = chat_parameters(req)
    assert (p.do_sample, p.temperature) == (False, None)  # temperature 0 = greedy
    assert p.repetition_penalty == 2.5  # presence_penalty p -> p + 2
    assert p.max_new_tokens == 7 and p.top_p == 1.0 and p.top_n_tokens == 2
    assert p.stop == ["x"] and p.details and p.grammar is not None
    sampled = chat_parameters(ChatRequest.model_validate({"messages": []}))
    assert sampled.do_sample and sampled.temperature is None and sampled.repetition_penalty is None
    with pytest.raises(RequestBodyError, match="Failed to deserialize"):
        parse_body(ChatRequest, b'{"messages":[],"logit_bias":{"1":2}}', "application/json",
                   limit=1000)
    with pytest.raises(RequestBodyError, match="Failed to deserialize"):
        parse_body(ChatRequest, b'{"messages":[],"response_format":{"type":"json_schema",'
                   b'"json_schema":{"name":"x","schema":{}}}}', "application/json", limit=1000)
    c = completion_parameters(CompletionRequest.model_validate({"prompt": "x", "temperature": 0.5}))
    assert c.do_sample and c.temperature == 0.5 and c.max_new_tokens == 100


def test_settings_limits_and_cli_flags() -> None:
    assert Settings().limits_for(8192) == Limits(4095, 4096)
    assert Settings().limits_for(2048) == Limits(2047, 2048)
    assert Settings(max_input_tokens=100).limits_for(2048).max_total_tokens == 2048
    assert Settings(max_total_tokens=64).limits_for(2048).max_input_tokens == 63
    with pytest.raises(SettingsError, match="must be < `max_total_tokens`"):
        Settings(max_input_tokens=64, max_total_tokens=64)
    with pytest.raises(SettingsError, match="context length"):
        Settings(max_total_tokens=4096).limits_for(2048)
    with pytest.raises(SettingsError, match="--max-concurrent-requests must be >= 1"):
        Settings(max_concurrent_requests=0)
    s = parse_settings(
        ["--model-id", "tiny", "--hostname", "0.0.0.0", "--port", "9000",
         "--max-concurrent-requests", "3", "--max-input-tokens", "10", "--max-total-tokens", "20",
         "--max-best-of", "1", "--max-stop-sequences", "2", "--max-top-n-tokens", "0",
         "--num-threads", "2"]
    )
    assert (s.model_id, s.hostname, s.port, s.max_concurrent_requests) == ("tiny", "0.0.0.0", 9000, 3)
    assert (s.max_input_tokens, s.max_total_tokens, s.max_best_of) == (10, 20, 1)
    assert (s.max_stop_sequences, s.max_top_n_tokens, s.num_threads) == (2, 0, 2)
    assert parse_settings([]).port == 8080
