"""Prompt-side work of the engine: prefilling prompts into caches, the shared chat prefix, prompt logprobs.

Use these from the engine's worker thread only (they run the thread's `Network`).

* `prefill_many` runs several prompts in one forward and returns each one's last logits and its own
  cache. Prompts are right-padded to a common length: causal attention keeps the padding out of
  the real tokens, and the padding is cut off each row's cache. Beyond `PREFILL_TOKENS` tokens in
  all, the prompts are fed in column chunks over their growing cache.
* A prompt that starts with the chat template's opening (`Prefix`, prefilled once at start) only
  computes the rest, attending to a copy of the prefix's cache.
* `prompt_logprobs` scores every prompt token (`decoder_input_details`) in chunks over a growing
  cache, so memory stays bounded by the chunk, not the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from localtgi.network import F32, Network, past_bias

RowCache = tuple[F32, F32]  # keys, values [layers, kv_heads, length, head_dim]
_LOGPROB_CHUNK = 128
# Tokens in one prefill forward. OpenVINO's intermediate buffers grow with the tokens of the largest
# forward it has run (about 0.5 MB a token for SmolLM2) and are kept; 256 bounds them, and larger
# forwards gain nothing: prefill is compute-bound well before.
PREFILL_TOKENS = 128


@dataclass(frozen=True)
class Prefix:
    """A prompt head shared by many requests (the chat template's opening), prefilled once."""

    ids: tuple[int, ...]
    cache: RowCache


def chat_prefix_ids(tokenizer: Any) -> tuple[int, ...]:
    """Token ids every chat-templated prompt starts with (e.g. SmolLM2's default system turn).

    Two renderings with different user messages are compared, so a BPE merge across the boundary
    cannot make the prefix wrong. Empty when the template has no common opening.
    """
    try:
        a, b = (
            tokenizer.encode(
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
                )
            )
            for text in ("Hello there", "42? Well")
        )
    except Exception:  # noqa: BLE001 - a model without a usable template just gets no prefix
        return ()
    common = 0
    while common < min(len(a), len(b)) and a[common] == b[common]:
        common += 1
    return tuple(int(i) for i in a[:common])


def compute_prefix(network: Network, ids: Sequence[int]) -> Prefix:
    """Prefill `ids` once, to be reused by `prefill_many` for every prompt that starts with them."""
    _, cache = _forward_prompts(network, [list(ids)], None)[0]
    return Prefix(ids=tuple(ids), cache=cache)


def prefill_many(
    network: Network, prompts: Sequence[Sequence[int]], prefix: Prefix | None = None
) -> list[tuple[F32, RowCache]]:
    """Prefill prompts together; per prompt its last logits [vocab] and its own cache."""
    n = len(prefix.ids) if prefix else 0
    with_prefix: list[int] = []
    plain: list[int] = []
    for i, ids in enumerate(prompts):
        fits = prefix is not None and len(ids) > n and tuple(ids[:n]) == prefix.ids
        (with_prefix if fits else plain).append(i)
    results: dict[int, tuple[F32, RowCache]] = {}
    for group, head in ((with_prefix, prefix), (plain, None)):
        if group:
            rows = _forward_prompts(network, [list(prompts[i]) for i in group], head)
            results.update(zip(group, rows, strict=True))
    return [results[i] for i in range(len(prompts))]


def _forward_prompts(
    network: Network, prompts: list[list[int]], prefix: Prefix | None
) -> list[tuple[F32, RowCache]]:
    start = len(prefix.ids) if prefix else 0
    rest = [p[start:] for p in prompts]
    rows, width = len(rest), max(map(len, rest))
    ids = np.array([r + [r[-1]] * (width - len(r)) for r in rest], dtype=np.int64)
    if prefix:
        keys = np.repeat(prefix.cache[0][:, None], rows, axis=1)
        values = np.repeat(prefix.cache[1][:, None], rows, axis=1)
    else:
        keys = values = network.shape.empty_cache(rows, 0)
    last = [len(r) - 1 for r in rest]
    logits: list[F32 | None] = [None] * rows
    # Column chunks of at most PREFILL_TOKENS tokens in all: a long prompt is fed in pieces over
    # its growing cache, which bounds the network's intermediate memory per forward.
    step = max(1, PREFILL_TOKENS // rows)
    for begin in range(0, width, step):
        end = min(width, begin + step)
        index = np.array([[min(max(i - begin, 0), end - begin - 1)] for i in last], dtype=np.int64)
        span = np.arange(start + begin, start + end, dtype=np.int64)
        positions = np.broadcast_to(span, (rows, end - begin))
        bias = past_bias([start + begin] * rows, start + begin)
        out, k, v = network.run(ids[:, begin:end], positions, bias, keys, values, index)
        keys, values = np.concatenate((keys, k), axis=3), np.concatenate((values, v), axis=3)
        for row, i in enumerate(last):
            if begin <= i < end:
                logits[row] = out[row, 0]
    result = []
    for row, r in enumerate(rest):
        row_logits = logits[row]
        assert row_logits is not None  # every row's last token lies in exactly one chunk
        length = start + len(r)
        cache = (keys[:, row, :, :length].copy(), values[:, row, :, :length].copy())
        result.append((row_logits, cache))
    return result


def log_softmax(logits: F32) -> F32:
    """Numerically stable log-softmax over the last axis."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    out: F32 = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return out


def prompt_logprobs(network: Network, input_ids: Sequence[int]) -> list[float | None]:
    """Log-probability of every prompt token given the ones before it (None for the first)."""
    ids = np.array(list(input_ids), dtype=np.int64)
    keys = values = network.shape.empty_cache(1, 0)
    picked: list[float | None] = [None]
    for start in range(0, len(ids) - 1, _LOGPROB_CHUNK):
        chunk = ids[start : start + _LOGPROB_CHUNK]
        end = start + len(chunk)
        logits, k, v = network.run(
            chunk[None],
            np.arange(start, end, dtype=np.int64)[None],
            past_bias([start], start),
            keys,
            values,
            np.arange(len(chunk), dtype=np.int64)[None],
        )
        keys, values = np.concatenate((keys, k), axis=3), np.concatenate((values, v), axis=3)
        targets = ids[start + 1 : end + 1]
        rows = log_softmax(logits[0, : len(targets)])
        picked += rows[np.arange(len(targets)), targets].astype(float).tolist()
    return picked
