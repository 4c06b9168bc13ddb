"""Prompt-side work of the engine: prefilling prompts into caches, the shared chat prefix, prompt logprobs.

Use these from the engine's worker thread only (they run the thread's `Network`).

* `prefill` runs one prompt and returns its last logits and its cache; a prompt longer than
  `PREFILL_TOKENS` is fed in chunks over its growing cache.
* `groups` and `prefill_group` let prompts that arrive together share forwards: prompts of one
  chunk each, padded to the same width and after the same cached head, run as rows of one
  forward of at most `GROUP_TOKENS` tokens. A forward reads every weight once whatever its rows,
  so four 16-token prompts cost about 120 ms together against 46 ms each alone (SmolLM2, one
  thread). In the default compilation each row's results are bit-identical to the prompt's own
  forward (activations are quantized per row; tested), so a prompt's first token does not depend
  on what arrived with it; with `exact` float32 they agree up to rounding. Beyond about 64
  tokens a forward is compute-bound and sharing gains nothing, hence the cap. `prefill_many` is
  both together, for callers that want every result at once.
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

from localtgi.network import F32, Network, bucket, past_bias

RowCache = tuple[F32, F32]  # keys, values [layers, kv_heads, length, head_dim]
_LOGPROB_CHUNK = 128
# Tokens in one prefill forward. OpenVINO's intermediate buffers grow with the tokens of the largest
# forward it has run (about 0.5 MB a token for SmolLM2) and are kept; this bounds them, and larger
# forwards gain little: prefill is compute-bound well before.
PREFILL_TOKENS = 128  # a power of two: chunks are padded to one (`bucket`)
GROUP_TOKENS = 64  # padded tokens in one forward shared by several prompts


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
    """Prefill `ids` once, to be reused by `prefill` for every prompt that starts with them."""
    _, cache = prefill(network, ids)
    return Prefix(ids=tuple(int(i) for i in ids), cache=cache)


def prefill(network: Network, prompt: Sequence[int], prefix: Prefix | None = None) -> tuple[F32, RowCache]:
    """Prefill one prompt (after `prefix`'s cache when it starts with the prefix); its last logits
    [vocab] and its cache."""
    ids = [int(i) for i in prompt]
    start = 0
    keys = values = network.shape.empty_cache(1, 0)
    if _head(ids, prefix):
        assert prefix is not None
        start = len(prefix.ids)
        keys, values = prefix.cache[0][:, None], prefix.cache[1][:, None]
    logits: F32 | None = None
    for begin in range(start, len(ids), PREFILL_TOKENS):
        part = ids[begin : begin + PREFILL_TOKENS]
        # Padded to a power of two (with its last token; causal attention keeps the padding out of
        # the real tokens, and its keys are dropped) so that prompt shapes repeat: see network.bucket.
        width = min(bucket(len(part), 8), PREFILL_TOKENS)
        chunk = np.array(part + [part[-1]] * (width - len(part)), dtype=np.int64)[None]
        positions = np.arange(begin, begin + width, dtype=np.int64)[None]
        last = np.array([[len(part) - 1]], dtype=np.int64)
        out, k, v = network.run(chunk, positions, past_bias([begin], begin), keys, values, last)
        real = slice(0, len(part))
        keys = np.concatenate((keys, k[:, :, :, real]), axis=3)
        values = np.concatenate((values, v[:, :, :, real]), axis=3)
        logits = out[0, 0]
    assert logits is not None, "an empty prompt has no next token"
    return logits, (keys[:, 0], values[:, 0])


def _head(prompt: Sequence[int], prefix: Prefix | None) -> int:
    """How many leading tokens of `prompt` the prefix's cache holds (0 or the prefix's length)."""
    if prefix is None or len(prompt) <= len(prefix.ids):
        return 0
    return len(prefix.ids) if tuple(prompt[: len(prefix.ids)]) == prefix.ids else 0


def groups(prompts: Sequence[Sequence[int]], prefix: Prefix | None = None) -> list[list[int]]:
    """The indices of `prompts` in forwards they can share (`prefill_group`), in arrival order of
    each group's first prompt. A prompt of more than one chunk is a group of its own."""
    out: list[list[int]] = []
    open_groups: dict[tuple[int, int], list[int]] = {}
    for i, prompt in enumerate(prompts):
        head = _head(prompt, prefix)
        rest = len(prompt) - head
        if rest > PREFILL_TOKENS:
            out.append([i])
            continue
        width = bucket(rest, 8)
        key = (head, width)
        group = open_groups.get(key)
        if group is None or (len(group) + 1) * width > max(GROUP_TOKENS, width):
            group = open_groups[key] = []
            out.append(group)
        group.append(i)
    return out


def prefill_group(
    network: Network, prompts: Sequence[Sequence[int]], prefix: Prefix | None = None
) -> list[tuple[F32, RowCache]]:
    """Prefill prompts that `groups` put together, in one forward; per prompt what `prefill`
    returns."""
    if len(prompts) == 1:
        return [prefill(network, prompts[0], prefix)]
    head = _head(prompts[0], prefix)
    width = bucket(len(prompts[0]) - head, 8)
    rows = len(prompts)
    chunk = np.empty((rows, width), dtype=np.int64)
    last = np.empty((rows, 1), dtype=np.int64)
    for r, prompt in enumerate(prompts):
        part = [int(i) for i in prompt[head:]]
        assert _head(prompt, prefix) == head and bucket(len(part), 8) == width, "not one group"
        chunk[r] = part + [part[-1]] * (width - len(part))
        last[r, 0] = len(part) - 1
    positions = np.tile(np.arange(head, head + width, dtype=np.int64), (rows, 1))
    if head:
        assert prefix is not None
        keys = np.ascontiguousarray(np.repeat(prefix.cache[0][:, None], rows, axis=1))
        values = np.ascontiguousarray(np.repeat(prefix.cache[1][:, None], rows, axis=1))
    else:
        keys = values = network.shape.empty_cache(rows, 0)
    out, k, v = network.run(chunk, positions, past_bias([head] * rows, head), keys, values, last)
    results = []
    for r, prompt in enumerate(prompts):
        real = len(prompt) - head
        row_keys = np.concatenate((keys[:, r], k[:, r, :, :real]), axis=2)
        row_values = np.concatenate((values[:, r], v[:, r, :, :real]), axis=2)
        results.append((out[r, 0], (row_keys, row_values)))
    return results


def prefill_many(
    network: Network, prompts: Sequence[Sequence[int]], prefix: Prefix | None = None
) -> list[tuple[F32, RowCache]]:
    """Prefill every prompt, sharing forwards where `groups` allows; results in prompt order."""
    results: list[tuple[F32, RowCache] | None] = [None] * len(prompts)
    for group in groups(prompts, prefix):
        for i, result in zip(group, prefill_group(network, [prompts[i] for i in group], prefix), strict=True):
            results[i] = result
    return [r for r in results if r is not None]


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
