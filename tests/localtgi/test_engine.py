"""Engine behaviour on the seeded tiny model (plus one SmolLM2 real-text check at the end)."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest
import torch

from localtgi import prefill
from localtgi.decode_batch import DecodeBatch
from localtgi.detokenizer import Detokenizer
from localtgi.engine import Engine, GenerationStream
from localtgi.engine_types import FinishEvent, GrammarSpec, SamplingParams, TokenEvent
from localtgi.errors import GenerationError, IncompleteGenerationError
from localtgi.models import LoadedModel, load_model
from localtgi.network import Network, bucket
from localtgi.sampling import watermark_z_score
from localtgi.weights import dequantized_copy


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return load_model("tiny")


@pytest.fixture(scope="module")
def reference(tiny: LoadedModel) -> Any:
    """The oracle: transformers' own Llama with the int8-rounded weights the network runs."""
    assert tiny.source is not None
    return dequantized_copy(tiny.source)


@pytest.fixture(scope="module")
def net(tiny: LoadedModel) -> Network:
    return Network(tiny.network, tiny.shape, threads=1, exact=True)


@pytest.fixture
async def engine(tiny: LoadedModel) -> AsyncIterator[Engine]:
    eng = Engine(tiny, max_batch_size=8, exact=True)  # compared with the float reference
    await eng.start()
    yield eng
    await eng.stop()


async def run(stream: GenerationStream) -> tuple[list[TokenEvent], FinishEvent]:
    events = [e async for e in stream]
    assert all(e.finish is None for e in events[:-1])
    finish = events[-1].finish
    assert isinstance(finish, FinishEvent)
    return events, finish


def ids(lm: LoadedModel, text: str) -> list[int]:
    return list(lm.tokenizer.encode(text))


async def test_greedy_matches_transformers_generate(
    tiny: LoadedModel, engine: Engine, reference: Any
) -> None:
    prompt = ids(tiny, "Hello world")
    tokens, finish = await run(engine.submit(prompt, SamplingParams(max_new_tokens=12)))
    with torch.inference_mode():
        ref = reference.generate(
            torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None
        )
    assert [t.id for t in tokens] == ref[0, len(prompt) :].tolist()
    assert [t.index for t in tokens] == list(range(1, 13))
    assert finish.finish_reason == "length" and finish.generated_tokens == 12
    assert finish.seed is None
    assert finish.generated_text == "".join(t.text for t in tokens if not t.special)
    assert all(t.logprob <= 0 and math.isfinite(t.logprob) for t in tokens)


async def test_seeded_sampling_same_alone_and_in_batch(tiny: LoadedModel) -> None:
    # The default engine: its decode rows are bit-identical alone or batched.
    engine = Engine(tiny, max_batch_size=8)
    await engine.start()
    try:
        await seeded_alone_and_in_batch(tiny, engine)
    finally:
        await engine.stop()


async def seeded_alone_and_in_batch(tiny: LoadedModel, engine: Engine) -> None:
    params = SamplingParams(do_sample=True, seed=42, max_new_tokens=24, temperature=0.9)
    prompt = ids(tiny, "The quick brown fox")
    _, alone = await run(engine.submit(prompt, params))
    others = [ids(tiny, "x" * n + " capital of") for n in (1, 9, 17)]
    streams = [engine.submit(p, dataclasses.replace(params, seed=n)) for n, p in enumerate(others)]
    streams.insert(2, engine.submit(prompt, params))
    results = await asyncio.gather(*(run(s) for s in streams))
    assert results[2][1].generated_text == alone.generated_text
    assert results[2][1].seed == 42
    assert len({r[1].generated_text for r in results}) > 1


async def test_grammars_compile_off_the_event_loop(tiny: LoadedModel, engine: Engine) -> None:
    """A large JSON schema takes about a second to compile: the serving path compiles it in a worker
    thread (`grammar_matcher`) and hands the matcher to `submit`."""
    assert engine._grammar is not None
    compile_here = engine._grammar.compile
    threads: list[threading.Thread] = []

    def recording(spec: GrammarSpec) -> Any:
        threads.append(threading.current_thread())
        return compile_here(spec)

    engine._grammar.compile = recording  # type: ignore[method-assign]
    spec = GrammarSpec(kind="regex", value="[ab]{1,3}")
    matcher = await engine.grammar_matcher(spec)
    params = SamplingParams(max_new_tokens=8, grammar=spec)
    _, finish = await run(engine.submit(ids(tiny, "x"), params, matcher))
    assert threads == [threads[0]] and threads[0] is not threading.current_thread()
    assert finish.generated_text and set(finish.generated_text) <= {"a", "b"}


async def test_requests_wait_for_the_warm_up_and_then_run(tiny: LoadedModel) -> None:
    """Until the network is compiled and has run once the engine is not `warm` (/health answers
    503); a request submitted meanwhile waits in the queue and runs afterwards."""
    gate = threading.Event()

    def slow_network() -> Network:
        assert gate.wait(30)
        return Network(tiny.network, tiny.shape, threads=1, exact=True)

    eng = Engine(tiny, exact=True, open_network=slow_network)
    await eng.start()
    try:
        stream = eng.submit([1, 2, 3], SamplingParams(max_new_tokens=3))
        settled = asyncio.ensure_future(eng.settled())
        await asyncio.sleep(0.05)
        assert not eng.warm and not settled.done() and eng.waiting == 1
        gate.set()
        await asyncio.wait_for(settled, 30)
        assert eng.warm and eng.failure is None
        events, finish = await run(stream)
        assert len(events) == 3 and finish.generated_tokens == 3
    finally:
        gate.set()
        await eng.stop()


async def test_a_network_that_fails_to_compile_settles_the_engine_dead(tiny: LoadedModel) -> None:
    def broken() -> Network:
        raise RuntimeError("no network here")

    eng = Engine(tiny, open_network=broken)
    await eng.start()
    try:
        await asyncio.wait_for(eng.settled(), 30)
        assert not eng.warm and eng.failure is not None and "no network here" in eng.failure.message
    finally:
        await eng.stop()


async def test_random_seed_is_reported_and_reproduces(tiny: LoadedModel, engine: Engine) -> None:
    prompt = ids(tiny, "Paris")
    _, first = await run(engine.submit(prompt, SamplingParams(do_sample=True, max_new_tokens=16)))
    assert first.seed is not None
    again = SamplingParams(do_sample=True, seed=first.seed, max_new_tokens=16)
    _, second = await run(engine.submit(prompt, again))
    assert second.generated_text == first.generated_text


async def test_stop_sequence_ends_generation_and_is_kept(tiny: LoadedModel, engine: Engine) -> None:
    prompt = ids(tiny, "Hello world")
    _, full = await run(engine.submit(prompt, SamplingParams(max_new_tokens=20)))
    stop = full.generated_text[6:9]
    assert len(stop) == 3
    _, cut = await run(engine.submit(prompt, SamplingParams(max_new_tokens=20, stop=(stop,))))
    assert cut.finish_reason == "stop_sequence"
    assert stop in cut.generated_text
    assert full.generated_text.startswith(cut.generated_text)
    assert cut.generated_tokens < 20


async def test_eos_token_finishes_with_special_event(tiny: LoadedModel, engine: Engine) -> None:
    # A grammar that is complete before any text allows only eos tokens: the first one ends it.
    params = SamplingParams(max_new_tokens=9, grammar=GrammarSpec("regex", ""))
    tokens, finish = await run(engine.submit(ids(tiny, "Hi"), params))
    assert finish.finish_reason == "eos_token"
    assert [(t.id, t.special) for t in tokens] == [(tokens[0].id, True)]
    assert tokens[0].id in tiny.eos_token_ids and tokens[0].text == tiny.tokenizer.decode([tokens[0].id])
    assert finish.generated_text == "" and finish.generated_tokens == 1


async def test_watermarked_generation_is_detected(tiny: LoadedModel) -> None:
    # No early end: only <|im_start|>, which this seeded run never draws, counts as eos here.
    eng = Engine(dataclasses.replace(tiny, eos_token_ids=frozenset({1})), exact=True)  # <|im_start|>
    await eng.start()
    prompt = ids(tiny, "The quick")
    scores = {}
    try:
        for watermark in (True, False):
            params = SamplingParams(do_sample=True, seed=4, watermark=watermark, max_new_tokens=150)
            tokens, _ = await run(eng.submit(prompt, params))
            assert len(tokens) == 150
            scores[watermark] = watermark_z_score([prompt[-1], *(t.id for t in tokens)], eng.vocab_size)
    finally:
        await eng.stop()
    assert scores[True] > 4.0, scores
    assert abs(scores[False]) < 3.0


async def test_cancel_frees_the_slot_and_spares_the_others(tiny: LoadedModel, engine: Engine) -> None:
    long = engine.submit(ids(tiny, "one"), SamplingParams(max_new_tokens=1500))
    other = engine.submit(ids(tiny, "two"), SamplingParams(max_new_tokens=30))
    first = await long.__anext__()
    assert isinstance(first, TokenEvent)
    long.cancel()
    long.cancel()  # idempotent
    with pytest.raises(StopAsyncIteration):
        await long.__anext__()
    _, finish = await run(other)
    assert finish.generated_tokens == 30
    await wait_for(lambda: engine.active == 0)


async def wait_for(cond: Callable[[], bool], limit: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_stop_fails_inflight_streams(tiny: LoadedModel) -> None:
    eng = Engine(tiny, exact=True)
    await eng.start()
    stream = eng.submit(ids(tiny, "one"), SamplingParams(max_new_tokens=1500))
    await stream.__anext__()
    await eng.stop()
    with pytest.raises(IncompleteGenerationError):
        async for _ in stream:
            pass


async def test_a_failing_request_fails_alone(tiny: LoadedModel, engine: Engine) -> None:
    good = engine.submit(ids(tiny, "one"), SamplingParams(max_new_tokens=30))
    await good.__anext__()
    with pytest.raises(GenerationError, match="out of range"):
        engine.submit([len(tiny.tokenizer) + 1000], SamplingParams(max_new_tokens=5))
    _, finish = await run(good)
    assert finish.generated_tokens == 30
    await wait_for(lambda: engine.active == 0)


async def test_batch_limit_queues_and_everyone_finishes(tiny: LoadedModel) -> None:
    eng = Engine(tiny, max_batch_size=2, exact=True)  # exact: no row meets eos before 40 tokens
    await eng.start()
    try:
        streams = [eng.submit(ids(tiny, f"q{i}"), SamplingParams(max_new_tokens=40)) for i in range(5)]
        seen_waiting = eng.waiting  # the worker admits at most 2
        gathered = asyncio.gather(*(run(s) for s in streams))
        most = 0
        while not gathered.done():
            most = max(most, eng.active)
            await asyncio.sleep(0.002)
        results = await gathered
    finally:
        await eng.stop()
    assert seen_waiting >= 3 and 1 <= most <= 2
    assert [r[1].generated_tokens for r in results] == [40] * 5


async def test_top_n_tokens_and_prefill_logprobs(
    tiny: LoadedModel, engine: Engine, reference: Any
) -> None:
    prompt = ids(tiny, "The capital of France")
    tokens, _ = await run(engine.submit(prompt, SamplingParams(max_new_tokens=4, top_n_tokens=3)))
    for t in tokens:
        assert len(t.top_tokens) == 3
        assert t.top_tokens[0].id == t.id and t.top_tokens[0].logprob == pytest.approx(t.logprob)
        assert [x.logprob for x in t.top_tokens] == sorted((x.logprob for x in t.top_tokens), reverse=True)
    long = prompt * 60  # > 128 tokens: scored in chunks over a growing cache
    prefill = await engine.prefill(long)
    assert [p.id for p in prefill] == long and prefill[0].logprob is None
    assert prefill[2].text == tiny.tokenizer.decode([long[2]])
    with torch.inference_mode():
        logprobs = torch.log_softmax(reference(torch.tensor([long])).logits[0], -1)
    want = [logprobs[i - 1, long[i]].item() for i in range(1, len(long))]
    assert [p.logprob for p in prefill[1:]] == pytest.approx(want, abs=1e-4)


def test_detokenizer_holds_back_split_utf8(tiny: LoadedModel) -> None:
    tok = tiny.tokenizer
    text = "ab😀 c日本"
    pieces_ids = tok.encode(text)
    detok = Detokenizer(tok, tok.encode("Hi"))
    pieces = [detok.push(i) for i in pieces_ids]
    assert "".join(pieces) == text
    assert "" in pieces  # the emoji spans several byte tokens
    assert all("\ufffd" not in p for p in pieces)


def reference_next_logits(reference: Any, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        out: torch.Tensor = reference(torch.tensor([ids])).logits[0, -1]
        return out


def test_decode_batch_rows_join_and_leave_without_changing_results(
    tiny: LoadedModel, net: Network, reference: Any
) -> None:
    prompts = [ids(tiny, t) for t in ("Hello world", "The capital of France is", "x", "42")]
    histories = [list(p) for p in prompts]
    batch = DecodeBatch(net)
    for p in prompts[:2]:
        [(logits, cache)] = prefill.prefill_many(net, [p])
        batch.add([cache])
        histories[prompts.index(p)].append(int(logits.argmax()))
    rows = [0, 1]
    for step in range(70):  # past the buffer's spare room: it grows once
        if step == 3:  # two rows, prefilled together, join a running batch
            caches = []
            for i, (logits, cache) in zip((2, 3), prefill.prefill_many(net, prompts[2:]), strict=True):
                caches.append(cache)
                histories[i].append(int(logits.argmax()))
            batch.add(caches)
            rows += [2, 3]
        if step == 7:  # the longest row leaves; leading padding columns get trimmed
            batch.keep([0, 2, 3])
            rows = [0, 2, 3]
        out = batch.step([histories[r][-1] for r in rows])
        for row, r in enumerate(rows):
            if step % 10 == 0 or step in (3, 7, 8):
                want = reference_next_logits(reference, histories[r])
                torch.testing.assert_close(torch.from_numpy(out[row]), want, atol=1e-4, rtol=1e-4)
            histories[r].append(int(out[row].argmax()))
    assert batch.size == 3
    assert batch._keys.shape[3] > 64  # grew during a step (copied while its forward ran)


def test_an_emptied_batch_lets_go_of_its_cache(tiny: LoadedModel) -> None:
    """The network binds the cache buffers once for many steps; when the batch empties they must not
    stay alive through that binding (16 rows of SmolLM2 at 192 positions are 70 MB)."""
    fast = Network(tiny.network, tiny.shape, threads=1)
    prompts = [ids(tiny, t) for t in ("Hello world", "x")]
    first = prefill.prefill_many(fast, prompts)
    batch = DecodeBatch(fast)
    batch.add([cache for _, cache in first])
    before = batch.step([int(logits.argmax()) for logits, _ in first]).copy()
    keys = weakref.ref(batch._keys)
    batch.clear()
    gc.collect()
    assert keys() is None
    batch.add([cache for _, cache in first])  # bound again on the next step, same results
    again = batch.step([int(logits.argmax()) for logits, _ in first])
    assert np.array_equal(before, again)


def test_fast_decode_rows_are_independent_of_their_batch(tiny: LoadedModel) -> None:
    """Decode steps quantize activations per row, so a row's logits are bit-identical alone or in
    a batch that others join and leave (its prompt prefilled the same way in both runs)."""
    fast = Network(tiny.network, tiny.shape, threads=1)
    assert not fast.exact
    prompts = [ids(tiny, t) for t in ("Hello world", "The capital of France is", "x", "42")]
    first = [prefill.prefill_many(fast, [p])[0] for p in prompts]

    def decode(rows: list[int], steps: int, leave: int | None = None) -> dict[int, list[Any]]:
        batch = DecodeBatch(fast)
        batch.add([first[r][1] for r in rows])
        history = {r: [int(first[r][0].argmax())] for r in rows}
        out: dict[int, list[Any]] = {r: [] for r in rows}
        for step in range(steps):
            if step == 5 and leave is not None:  # a row leaves: the last one moves into its place
                hole = rows.index(leave)
                order = [i if i != hole else len(rows) - 1 for i in range(len(rows) - 1)]
                batch.keep(order)
                rows = [rows[i] for i in order]
            logits = batch.step([history[r][-1] for r in rows])
            for r, row in zip(rows, logits, strict=True):
                out[r].append(row.copy())
                history[r].append(int(row.argmax()))
        return out

    together = decode([0, 1, 2, 3], 12, leave=1)
    for r in (0, 2, 3):
        alone = decode([r], 12)[r]
        for a, b in zip(alone, together[r], strict=True):
            assert np.array_equal(a, b)


def test_prefill_beyond_its_token_budget_goes_in_chunks_and_matches_the_reference(
    tiny: LoadedModel, net: Network, reference: Any
) -> None:
    long = ids(tiny, "Hello world! The capital of France is Paris. " * 60)
    assert len(long) > 2 * prefill.PREFILL_TOKENS
    logits, cache = prefill.prefill(net, long)
    want = reference_next_logits(reference, long)
    torch.testing.assert_close(torch.from_numpy(logits), want, atol=1e-4, rtol=1e-4)
    assert cache[0].shape[2] == len(long)


def test_prefill_with_chat_prefix_matches_plain_forward(
    tiny: LoadedModel, net: Network, reference: Any
) -> None:
    tok = tiny.tokenizer
    head = prefill.chat_prefix_ids(tok)
    assert tok.decode(list(head)) == "<|im_start|>user\n"
    prompts = [chat(tiny, c) for c in ("Hi", "What is the capital of France?")]
    prompts.append(ids(tiny, "no template here"))
    prefix = prefill.compute_prefix(net, head)
    results = prefill.prefill_many(net, prompts, prefix)
    for p, (logits, cache) in zip(prompts, results, strict=True):
        torch.testing.assert_close(
            torch.from_numpy(logits), reference_next_logits(reference, p), atol=1e-4, rtol=1e-4
        )
        assert cache[0].shape[2] == len(p)


def test_prompts_that_arrive_together_share_forwards_of_bounded_size(tiny: LoadedModel) -> None:
    head = prefill.chat_prefix_ids(tiny.tokenizer)
    short = [list(head) + [5] * n for n in (3, 7, 8)]  # 8 wide after the head
    wider = [list(head) + [6] * n for n in (9, 16)]  # 16 wide
    plain = [[7] * 5]  # no head: a group of its own even though it is 8 wide
    long = [[8] * (prefill.PREFILL_TOKENS + 1)]
    prompts = [*short, *wider, *plain, *long, *wider, *wider]
    prefix = prefill.Prefix(ids=head, cache=(np.zeros(0, np.float32), np.zeros(0, np.float32)))
    # 8 wide: up to 8 a forward; 16 wide: up to 4; the long prompt and the headless one alone
    assert prefill.groups(prompts, prefix) == [[0, 1, 2], [3, 4, 7, 8], [5], [6], [9, 10]]
    assert prefill.groups([], prefix) == []
    for group in prefill.groups(prompts, None):  # without the head every prompt is its own length
        widths = {bucket(len(prompts[i]), 8) for i in group}
        assert len(widths) == 1 and (len(group) == 1 or len(group) * widths.pop() <= prefill.GROUP_TOKENS)
    assert sorted(i for g in prefill.groups(prompts, None) for i in g) == list(range(len(prompts)))


@pytest.mark.parametrize("with_head", [True, False])
def test_fast_prefill_rows_are_identical_to_each_prompt_alone(tiny: LoadedModel, with_head: bool) -> None:
    """Prompts sharing a forward get bit for bit the logits and cache of their own forward."""
    fast = Network(tiny.network, tiny.shape, threads=1)
    head = prefill.chat_prefix_ids(tiny.tokenizer)
    prefix = prefill.compute_prefix(fast, head) if with_head else None
    start = list(head) if with_head else []
    prompts = [start + ids(tiny, t) for t in ("Hello world", "The capital of France is", "x y z", "42")]
    [group] = prefill.groups(prompts, prefix)
    assert len(group) == 4
    together = prefill.prefill_group(fast, prompts, prefix)
    for prompt, (logits, (keys, values)) in zip(prompts, together, strict=True):
        alone_logits, (alone_keys, alone_values) = prefill.prefill(fast, prompt, prefix)
        assert np.array_equal(logits, alone_logits)
        assert np.array_equal(keys, alone_keys) and np.array_equal(values, alone_values)
        assert keys.shape[2] == len(prompt)


# ----- SmolLM2: one loaded model, real text ------------------------------------------------------


@pytest.fixture(scope="module")
def smol() -> tuple[LoadedModel, list[str]]:
    messages: list[str] = []
    # The default cache: converted from the GGUF on the first run ever (~35 s), then reused.
    return load_model("smollm2", progress=messages.append), messages


def chat(lm: LoadedModel, question: str) -> list[int]:
    text = lm.tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    return list(lm.tokenizer.encode(text))


async def test_smollm2_answers_and_follows_a_schema(smol: tuple[LoadedModel, list[str]]) -> None:
    lm, messages = smol
    assert lm.model_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert any(m.startswith("loading") for m in messages)
    # Float32: checks that the network is SmolLM2 (the default mode's quality is checked below).
    eng = Engine(lm, exact=True)
    await eng.start()
    try:
        question = chat(lm, "What is the capital of France?")
        tokens, finish = await run(eng.submit(question, SamplingParams(max_new_tokens=24)))
        schema = {
            "type": "object",
            "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
            "required": ["city", "country"],
        }
        grammar = GrammarSpec("json", schema)
        prompt = chat(lm, "Give the capital of France as JSON with keys city and country.")
        _, constrained = await run(
            eng.submit(prompt, SamplingParams(max_new_tokens=40, grammar=grammar))
        )
    finally:
        await eng.stop()
    assert "Paris" in finish.generated_text
    assert finish.finish_reason == "eos_token" and tokens[-1].special
    answer = json.loads(constrained.generated_text)
    assert set(answer) == {"city", "country"} and "Paris" in answer["city"]


def test_smollm2_on_int8_activations_stays_close_to_float32(smol: tuple[LoadedModel, list[str]]) -> None:
    """The default compilation against float32 on the same text, token by token (teacher forcing)."""
    lm, _ = smol
    text = (
        "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is "
        "named after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 "
        "to 1889. Locally nicknamed La dame de fer, it was the centerpiece of the 1889 World's Fair."
    )
    tokens = ids(lm, text)

    def next_logits(network: Network) -> Any:
        [(first, cache)] = prefill.prefill_many(network, [tokens[:4]])
        batch = DecodeBatch(network)
        batch.add([cache])
        rows = [first] + [batch.step([t])[0].copy() for t in tokens[4:-1]]
        return np.array(rows)

    exact = next_logits(Network(lm.network, lm.shape, threads=1, exact=True))
    fast = next_logits(Network(lm.network, lm.shape, threads=1))

    def log_softmax(x: Any) -> Any:
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    le, lf = log_softmax(exact), log_softmax(fast)
    kl = (np.exp(le) * (le - lf)).sum(-1)
    agree = (exact.argmax(-1) == fast.argmax(-1)).mean()
    assert kl.mean() < 0.02 and kl.max() < 0.2 and agree >= 0.9, (kl.mean(), kl.max(), agree)


_RELEASE_SCRIPT = """
import json, os, sys
import numpy as np
from localtgi import file_pages, prefill
from localtgi.decode_batch import DecodeBatch
from localtgi.models import load_model
from localtgi.network import Network, bucket

lm = load_model("smollm2")
net = Network(lm.network, lm.shape, threads=1)

def resident():
    return sum(file_pages.resident_bytes(f) for f in net.mapped_files)
prompt = lm.tokenizer.encode("The capital of France is")

def next_logits():
    [(first, cache)] = prefill.prefill_many(net, [prompt])
    batch = DecodeBatch(net)
    batch.add([cache])
    return first, batch.step([int(first.argmax())])[0].copy()

before = next_logits()
used = [f for f in net.mapped_files if file_pages.resident_bytes(f)]  # the .bin, or a compiled copy
size = sum(os.path.getsize(f) for f in used)
resident_before = resident()
released = net.release_weights_file()
after_release = resident()
after = next_logits()
print(json.dumps({
    "used": used, "size": size, "resident": resident_before, "released": released,
    "after_release": after_release, "after_forwards": resident(),
    "same": all(np.array_equal(a, b) for a, b in zip(before, after)),
}))
"""


def test_smollm2_weights_file_pages_are_given_back(
    smol: tuple[LoadedModel, list[str]], tmp_path: pathlib.Path
) -> None:
    """After one prefill and one decode step the CPU plugin works from its own copy of the
    weights: the pages of the file it mapped are released (about the file's size of resident
    memory) and later forwards give the same logits, reading back only a little of the file.
    Twice: the first start compiles from the saved weights (and leaves the compiled copy), the
    second loads the compiled copy. Each in a process of its own, over a private copy of the
    converted model: a mapping of the same file elsewhere (this process, or any other) would
    keep the pages resident."""
    lm, _ = smol
    source = pathlib.Path(lm.network).parent
    private = tmp_path / source.name
    shutil.copytree(source, private, ignore=shutil.ignore_patterns("compiled"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "LOCALTGI_CACHE": str(tmp_path)}
    used = []
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-c", _RELEASE_SCRIPT], capture_output=True, text=True, env=env, timeout=120
        )
        assert out.returncode == 0, out.stderr[-2000:]
        r = json.loads(out.stdout.strip().splitlines()[-1])
        assert r["used"] and r["resident"] > 0.8 * r["size"], r  # the forwards read the whole file
        assert r["released"] and r["after_release"] < 0.05 * r["size"], r
        assert r["same"], r
        assert r["after_forwards"] < 0.2 * r["size"], r
        used.append([pathlib.Path(f).suffix for f in r["used"]])
    assert used == [[".bin"], [".blob"]]


def test_smollm2_prompts_sharing_a_forward_get_their_own_results(smol: tuple[LoadedModel, list[str]]) -> None:
    """The real model's kernels (larger than the tiny model's): chat prompts prefilled four to a
    forward after the shared head equal their own forwards bit for bit."""
    lm, _ = smol
    fast = Network(lm.network, lm.shape, threads=1)
    prefix = prefill.compute_prefix(fast, prefill.chat_prefix_ids(lm.tokenizer))
    questions = ("Hi!", "Why?", "What is 2+2?", "Who wrote Hamlet?", "How far is the moon?", "Say yes.")
    prompts = [chat(lm, q) for q in questions]
    assert prefill.groups(prompts, prefix) == [[0, 1], [2, 3, 4, 5]]  # 8 and 16 tokens wide
    together = prefill.prefill_many(fast, prompts, prefix)
    for prompt, (logits, (keys, _)) in zip(prompts, together, strict=True):
        alone_logits, (alone_keys, _) = prefill.prefill(fast, prompt, prefix)
        assert np.array_equal(logits, alone_logits) and np.array_equal(keys, alone_keys)
