"""Per-request next-token choice: logits processing, the watermark, and a private random generator.

Use one `TokenChooser` per generation. The engine hands it one row of raw logits per step; it applies
TGI's order of processors and returns the chosen token with its log-probability:

1. watermark (Kirchenbauer et al. 2023: add `delta` to a green list seeded by the previous token),
2. repetition penalty (CTRL / HF style, over prompt and generated tokens),
3. frequency penalty (TGI style: `penalty * count / length` over prompt and generated tokens),
4. the grammar mask (given by the caller, disallowed tokens -> -inf),
5. when sampling: temperature, top-k, top-p, typical-p (HF warper semantics), then a draw from the
   request's own `numpy.random.Generator`; when greedy: argmax.

The reported logprob is log-softmax of the final processed distribution the token was drawn from
(after the warpers when sampling, after penalties/mask when greedy), as TGI reports it.

Everything is numpy over one float32 row of logits (vectorised, no loop over the vocabulary), so the
serving process needs no torch. A request's `seed` seeds its own PCG64 generator: the same seed gives
the same draws (alone or in a batch), but not the draws torch's generator (and so TGI) would make
with that seed; the watermark's green lists likewise come from numpy's generator, so only
`watermark_z_score` here (not TGI's detector) recognises localtgi's watermark.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from localtgi.engine_types import SamplingParams

Scores = npt.NDArray[np.float32]
Mask = npt.NDArray[np.bool_]
_HEAD = 256  # see _smallest_first
_DRAW_BLOCK = 256  # see draw
# TGI accepts any positive temperature and repetition penalty. Logits divided (or multiplied) by
# values beyond these bounds over- or underflow float32 (a temperature of 1e-300 is 0 in float32):
# such temperatures are taken in float64 from the row's maximum (the coldest is greedy, the
# hottest uniform), and penalties are clamped to them, where their effect is already total.
_COLDEST, _HOTTEST = 1e-30, 1e30

WATERMARK_GAMMA = 0.5
WATERMARK_DELTA = 2.0
# The fixed hash key of the reference implementation (a large prime); the green list for a previous
# token t is the first gamma*V entries of a permutation drawn from a generator seeded with KEY * t.
WATERMARK_KEY = 15485863


def is_sampling(params: SamplingParams) -> bool:
    """TGI samples when asked to, and also whenever a sampling-only warper is set."""
    return (
        params.do_sample
        or params.temperature != 1.0
        or params.top_k is not None
        or (params.top_p is not None and params.top_p < 1.0)
        or (params.typical_p is not None and params.typical_p < 1.0)
    )


@lru_cache(maxsize=512)
def green_mask(prev_token: int, vocab_size: int) -> Mask:
    """The watermark green list after `prev_token`, as a read-only bool mask over the vocabulary."""
    perm = np.random.default_rng(WATERMARK_KEY * prev_token).permutation(vocab_size)
    mask = np.zeros(vocab_size, dtype=bool)
    mask[perm[: int(vocab_size * WATERMARK_GAMMA)]] = True
    mask.flags.writeable = False  # shared by the cache
    return mask


def watermark_z_score(token_ids: Sequence[int], vocab_size: int) -> float:
    """Detect the watermark: z-score of green tokens among `token_ids[1:]` (each judged by the token
    before it). Pass the last prompt token first. Around 0 for plain text; > 4 is a strong signal."""
    scored = len(token_ids) - 1
    if scored < 1:
        return 0.0
    green = sum(
        bool(green_mask(int(prev), vocab_size)[int(tok)])
        for prev, tok in zip(token_ids[:-1], token_ids[1:], strict=True)
    )
    gamma = WATERMARK_GAMMA
    return (green - gamma * scored) / math.sqrt(scored * gamma * (1 - gamma))


@dataclass(frozen=True)
class Choice:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # (id, logprob) best first, finite logprobs only


class TokenChooser:
    """Chooses the next token for one request; holds its penalty counts and its generator."""

    def __init__(self, params: SamplingParams, prompt_ids: Sequence[int], vocab_size: int) -> None:
        self.params = params
        self.vocab_size = vocab_size
        self.sampling = is_sampling(params)
        self.seed: int | None = None
        self.generator: np.random.Generator | None = None
        if self.sampling:
            self.seed = params.seed if params.seed is not None else secrets.randbits(63)
            self.generator = np.random.default_rng(self.seed)
        rep = params.repetition_penalty
        freq = params.frequency_penalty
        self._rep = min(max(rep, _COLDEST), _HOTTEST) if rep is not None and rep != 1.0 else None
        self._freq = freq if freq is not None and freq != 0.0 else None
        self._counts: Scores | None = None
        self._length = len(prompt_ids)
        if self._rep is not None or self._freq is not None:
            ids = np.clip(np.asarray(list(prompt_ids), dtype=np.int64), 0, vocab_size - 1)
            self._counts = np.bincount(ids, minlength=vocab_size).astype(np.float32)
        self._prev = int(prompt_ids[-1]) if len(prompt_ids) else 0

    def choose(self, logits: npt.ArrayLike, allowed: Mask | None = None) -> Choice:
        """Pick the next token from one row of raw logits [vocab]; `allowed` is the grammar's bool
        mask. The logits are not modified."""
        # Copied only when changed in place below: `_warp` and `log_softmax` make new arrays.
        edits = self.params.watermark or self._counts is not None or allowed is not None
        scores = np.array(logits, dtype=np.float32, copy=True if edits else None)
        if self.params.watermark:
            scores[green_mask(self._prev, self.vocab_size)] += np.float32(WATERMARK_DELTA)
        if self._counts is not None:
            if self._rep is not None:
                seen = self._counts > 0
                picked = scores[seen]
                scores[seen] = np.where(picked < 0, picked * self._rep, picked / self._rep)
            if self._freq is not None:
                scores -= (self._freq / max(self._length, 1)) * self._counts
        if allowed is not None:
            scores[~allowed] = -np.inf
        n = min(self.params.top_n_tokens, scores.size)
        if not self.sampling and n == 0:
            # Greedy without top tokens needs one log-probability, not all of them: the same
            # float32 operations as `log_softmax` on the chosen entry alone.
            token = int(np.argmax(scores))
            shifted = scores - scores.max()
            total = np.log(np.exp(shifted).sum(dtype=np.float32))
            return Choice(token_id=token, logprob=float(shifted[token] - total), top=())
        if self.sampling:
            scores = self._warp(scores)
        logprobs = log_softmax(scores)
        if self.sampling:
            assert self.generator is not None
            token = draw(logprobs, self.generator.random())
        else:
            token = int(np.argmax(scores))
        top: tuple[tuple[int, float], ...] = ()
        if n > 0:
            best = np.argpartition(-logprobs, n - 1)[:n]
            best = best[np.argsort(-logprobs[best], kind="stable")]
            top = tuple((int(i), float(logprobs[i])) for i in best if np.isfinite(logprobs[i]))
        return Choice(token_id=token, logprob=float(logprobs[token]), top=top)

    def accept(self, token_id: int) -> None:
        """Record the chosen token (penalty counts, watermark context)."""
        self._prev = token_id
        self._length += 1
        if self._counts is not None and 0 <= token_id < self.vocab_size:
            self._counts[token_id] += 1

    def _warp(self, scores: Scores) -> Scores:
        p = self.params
        if p.temperature != 1.0:
            scores = temperature_scaled(scores, p.temperature)
        if p.top_k is not None and 0 < p.top_k < scores.size:
            kth = np.partition(scores, scores.size - p.top_k)[scores.size - p.top_k]
            scores = np.where(scores < kth, np.float32(-np.inf), scores)
        if p.top_p is not None and p.top_p < 1.0:
            scores = top_p_filter(scores, p.top_p)
        if p.typical_p is not None and p.typical_p < 1.0:
            scores = typical_filter(scores, p.typical_p)
        return scores


def temperature_scaled(scores: Scores, temperature: float) -> Scores:
    """`scores / temperature` in float32, without infinities or NaN for extreme temperatures: far
    below 1 only the best tokens stay finite (greedy, ties shared), far above it every finite
    score becomes about equal."""
    if _COLDEST <= temperature <= _HOTTEST:
        return scores / np.float32(temperature)
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        shifted = scores.astype(np.float64) - float(scores.max())
        scaled: Scores = (shifted / temperature).astype(np.float32)
    return scaled


def draw(logprobs: Scores, u: float) -> int:
    """Inverse-CDF draw of one token for a uniform `u` in [0, 1): the first token whose cumulative
    probability exceeds `u` times the total. Zero-probability tokens never win (their CDF step is
    empty). The CDF is taken in two levels, over blocks of `_DRAW_BLOCK` tokens and then inside the
    chosen block, with float64 sums, so a draw reads the vocabulary twice instead of building a
    float64 CDF of all of it (a fifth of the time on 49k tokens)."""
    probs = np.exp(logprobs)
    n = probs.size
    blocks = -(-n // _DRAW_BLOCK)
    if n != blocks * _DRAW_BLOCK:
        probs = np.concatenate((probs, np.zeros(blocks * _DRAW_BLOCK - n, dtype=probs.dtype)))
    block_cdf = np.cumsum(probs.reshape(blocks, _DRAW_BLOCK).sum(axis=1, dtype=np.float64))
    target = u * block_cdf[-1]
    b = min(int(np.searchsorted(block_cdf, target, side="right")), blocks - 1)
    inner = np.cumsum(probs[b * _DRAW_BLOCK : (b + 1) * _DRAW_BLOCK], dtype=np.float64)
    rest = target - (block_cdf[b - 1] if b else 0.0)
    token = b * _DRAW_BLOCK + min(int(np.searchsorted(inner, rest, side="right")), _DRAW_BLOCK - 1)
    if token >= n or probs[token] == 0:  # rounding carried the target past the block's last live token
        token = int(np.flatnonzero(probs[: min(token, n - 1) + 1] > 0)[-1])
    return token


def log_softmax(scores: Scores) -> Scores:
    """log-softmax of one row; -inf stays -inf (at least one entry must be finite)."""
    shifted: Scores = scores - scores.max()
    shifted -= np.log(np.exp(shifted).sum(dtype=np.float32))
    return shifted


def top_p_filter(scores: Scores, top_p: float) -> Scores:
    """Keep the smallest set of most likely tokens whose probability reaches `top_p` (>= 1 token).

    As transformers' warper: a token goes when the tokens more likely than it already hold `top_p`
    (there: the ascending cumulative probability up to it is <= 1 - top_p)."""
    probs = np.exp(log_softmax(scores))
    order, cumulative = _smallest_first(-scores, probs, top_p)
    before = cumulative - probs[order]
    kept = before < top_p
    kept[0] = True  # the most likely token stays, even where top_p is 0 in float32
    keep = order[kept]
    out = np.full_like(scores, -np.inf)
    out[keep] = scores[keep]
    return out


def typical_filter(scores: Scores, mass: float) -> Scores:
    """Locally typical sampling (Meister et al.): keep tokens whose surprise is closest to the
    entropy until `mass` probability is covered (>= 1 token)."""
    logp = log_softmax(scores)
    p = np.exp(logp)
    live = np.isfinite(logp)
    entropy = -(logp[live] * p[live]).sum()
    shifted = np.abs(-logp - entropy)  # +inf for excluded tokens
    order, cumulative = _smallest_first(shifted, p, mass)
    last = min(int((cumulative < mass).sum()), scores.size - 1, order.size - 1)
    return np.where(shifted > shifted[order[last]], np.float32(-np.inf), scores)


def _smallest_first(keys: Scores, probs: Scores, mass: float) -> tuple[npt.NDArray[np.intp], Scores]:
    """The tokens with the smallest `keys`, in order, with the running sum of their `probs`: as many
    as it takes to reach `mass` (every token if they never do). A language model's next-token
    distribution is usually peaked, so first only the 256 smallest are sorted (`argpartition`,
    about a tenth of a full sort of a 49k vocabulary); the whole vocabulary when they fall short."""
    if keys.size > _HEAD:
        head = np.argpartition(keys, _HEAD - 1)[:_HEAD]
        head = head[np.argsort(keys[head])]
        cumulative = np.cumsum(probs[head])
        if cumulative[-1] >= mass:
            return head, cumulative
    order = np.argsort(keys)
    return order, np.cumsum(probs[order])
