"""Constrained decoding with llguidance on the tiny model: masks, compile errors, and generations."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import pytest

from localtgi.engine import Engine
from localtgi.engine_types import FinishEvent, GrammarSpec, SamplingParams
from localtgi.errors import GrammarError
from localtgi.grammar import GrammarCompiler, closed_objects
from localtgi.models import LoadedModel, load_model

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "ok": {"type": "boolean"},
        "kind": {"enum": ["cat", "dog"]},
    },
    "required": ["name", "ok", "kind"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return load_model("tiny")


@pytest.fixture(scope="module")
def compiler(tiny: LoadedModel) -> GrammarCompiler:
    return GrammarCompiler(tiny.tokenizer, len(tiny.tokenizer), tiny.eos_token_ids)


@pytest.fixture
async def engine(tiny: LoadedModel) -> AsyncIterator[Engine]:
    eng = Engine(tiny)
    await eng.start()
    yield eng
    await eng.stop()


def accepts(compiler: GrammarCompiler, tiny: LoadedModel, spec: GrammarSpec, text: str) -> bool:
    matcher = compiler.compile(spec)
    for token in tiny.tokenizer.encode(text):
        if not bool(matcher.allowed()[token]):
            return False
        matcher.consume(token)
    return matcher.is_accepting


def test_empty_json_schema_means_any_object(compiler: GrammarCompiler, tiny: LoadedModel) -> None:
    spec = GrammarSpec("json", {})
    assert accepts(compiler, tiny, spec, '{"a":1,"b":[true,null]}')
    assert not accepts(compiler, tiny, spec, "[1]")
    assert not accepts(compiler, tiny, spec, '{"a":')


def test_schema_and_regex_masks(compiler: GrammarCompiler, tiny: LoadedModel) -> None:
    spec = GrammarSpec("json", PERSON)
    assert accepts(compiler, tiny, spec, '{"name":"Al","ok":true,"kind":"cat"}')
    assert not accepts(compiler, tiny, spec, '{"name":"Al","ok":1,"kind":"cat"}')
    assert not accepts(compiler, tiny, spec, '{"name":"Al","ok":true,"kind":"cow"}')
    digits = GrammarSpec("regex", r"[0-9]{3}-[a-z]{2}")
    assert accepts(compiler, tiny, digits, "123-ab")
    assert not accepts(compiler, tiny, digits, "12-ab")


@pytest.mark.parametrize(
    "spec",
    [GrammarSpec("regex", "[a-"), GrammarSpec("json", {"type": "nonsense"}), GrammarSpec("json", [1])],
)
async def test_bad_grammar_raises_from_submit(engine: Engine, spec: GrammarSpec) -> None:
    with pytest.raises(GrammarError):
        engine.submit([5, 6], SamplingParams(grammar=spec))
    assert engine.waiting == 0


def test_compile_is_fast(compiler: GrammarCompiler) -> None:
    start = time.perf_counter()
    for _ in range(10):
        compiler.compile(GrammarSpec("json", PERSON))
    assert (time.perf_counter() - start) / 10 < 0.05


async def generate(engine: Engine, tiny: LoadedModel, params: SamplingParams) -> FinishEvent:
    events = [e async for e in engine.submit(tiny.tokenizer.encode("Hello"), params)]
    finish = events[-1].finish
    assert isinstance(finish, FinishEvent)
    return finish


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_regex_generation_matches(engine: Engine, tiny: LoadedModel, seed: int) -> None:
    spec = GrammarSpec("regex", r"[0-9]{3}-[a-z]{2}")
    params = SamplingParams(do_sample=True, seed=seed, max_new_tokens=30, grammar=spec)
    finish = await generate(engine, tiny, params)
    assert re.fullmatch(r"[0-9]{3}-[a-z]{2}", finish.generated_text)
    assert finish.finish_reason == "eos_token"


@pytest.mark.parametrize("seed", [1, 2])
async def test_json_schema_generation_validates(engine: Engine, tiny: LoadedModel, seed: int) -> None:
    params = SamplingParams(
        do_sample=True, seed=seed, max_new_tokens=80, grammar=GrammarSpec("json", PERSON)
    )
    finish = await generate(engine, tiny, params)
    assert finish.finish_reason == "eos_token"
    jsonschema.validate(json.loads(finish.generated_text), PERSON)


async def test_grammar_cut_by_length_reports_length(engine: Engine, tiny: LoadedModel) -> None:
    params = SamplingParams(max_new_tokens=3, grammar=GrammarSpec("json", PERSON))
    finish = await generate(engine, tiny, params)
    assert finish.finish_reason == "length"
    assert finish.generated_text.startswith('{"')


def test_objects_are_closed_like_tgi() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "object", "properties": {"b": {"type": "integer"}}},
                       "c": {"type": "array", "items": {"properties": {"d": {"type": "string"}}}}},
        "$defs": {"e": {"properties": {}, "additionalProperties": True}},
    }
    closed = closed_objects(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["a"]["additionalProperties"] is False
    assert closed["properties"]["c"]["items"]["additionalProperties"] is False
    assert closed["$defs"]["e"]["additionalProperties"] is True  # an explicit choice is kept
    assert "additionalProperties" not in schema["properties"]["a"]  # the request's schema is untouched


async def test_a_hostile_regex_fails_its_request_quickly_without_echoing_the_grammar(
    engine: Engine, tiny: LoadedModel
) -> None:
    """`x{1000}{1000}` builds a million-state lexer: llguidance gives up within the per-request
    limits (`GrammarCompiler.LEXER_FUEL`, `LEXER_STATES`), the request fails with a short error
    that repeats neither the grammar nor the parser's state, and the engine serves on."""
    spec = GrammarSpec("regex", "x{1000}{1000}")
    matcher = await engine.grammar_matcher(spec)
    params = SamplingParams(max_new_tokens=5, grammar=spec)
    with pytest.raises(GrammarError) as failed:
        async for _ in engine.submit(tiny.tokenizer.encode("Hello"), params, matcher):
            pass
    message = str(failed.value)
    assert "too many expressions" in message and len(message) < 300, message
    assert "x{1000}" not in message and "<grammar>" not in message and "<state>" not in message
    finish = await generate(engine, tiny, SamplingParams(max_new_tokens=3))
    assert finish.generated_tokens == 3


def test_the_first_mask_is_computed_where_the_grammar_compiles(compiler: GrammarCompiler) -> None:
    """The lexer is built lazily at the first mask, which for a large grammar is the slow part:
    `compile` (run in a worker thread) pays for it, not the model thread's first step."""
    matcher = compiler.compile(GrammarSpec("regex", "x{100}{100}"))
    calls = []

    class Counting:  # stands in for llguidance's matcher, counting the masks asked of it
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def compute_bitmask(self) -> bytes:
            calls.append(1)
            mask: bytes = self.inner.compute_bitmask()
            return mask

    matcher._matcher = Counting(matcher._matcher)
    first = matcher.allowed()
    assert first.sum() == 1 and calls == []  # only "x", and already computed
    matcher.consume(int(first.argmax()))
    assert matcher.allowed().sum() >= 1 and calls == [1]
