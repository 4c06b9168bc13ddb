"""Per-request next-token choice: logits processing, the watermark, and a private torch.Generator.

Use one `TokenChooser` per generation. The engine hands it one row of raw logits per step; it applies
TGI's order of processors and returns the chosen token with its log-probability:

1. watermark (Kirchenbauer et al. 2023: add `delta` to a green list seeded by the previous token),
2. repetition penalty (CTRL / HF style, over prompt and generated tokens),
3. frequency penalty (TGI style: `penalty * count / length` over prompt and generated tokens),
4. the grammar mask (given by the caller, disallowed tokens -> -inf),
5. when sampling: temperature, top-k, top-p, typical-p (HF warper semantics), then a draw from the
   request's own `torch.Generator`; when greedy: argmax.

The reported logprob is log-softmax of the final processed distribution the token was drawn from
(after the warpers when sampling, after penalties/mask when greedy), as TGI reports it.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

from localtgi.engine_types import SamplingParams

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
def green_mask(prev_token: int, vocab_size: int) -> torch.Tensor:
    """The watermark green list after `prev_token`, as a bool mask over the vocabulary."""
    gen = torch.Generator().manual_seed(WATERMARK_KEY * prev_token)
    perm = torch.randperm(vocab_size, generator=gen)
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    mask[perm[: int(vocab_size * WATERMARK_GAMMA)]] = True
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
        self.generator: torch.Generator | None = None
        if self.sampling:
            self.seed = params.seed if params.seed is not None else secrets.randbits(63)
            self.generator = torch.Generator().manual_seed(self.seed)
        rep = params.repetition_penalty
        freq = params.frequency_penalty
        self._rep = rep if rep is not None and rep != 1.0 else None
        self._freq = freq if freq is not None and freq != 0.0 else None
        self._counts: torch.Tensor | None = None
        self._length = len(prompt_ids)
        if self._rep is not None or self._freq is not None:
            ids = torch.tensor(list(prompt_ids), dtype=torch.long).clamp_(0, vocab_size - 1)
            self._counts = torch.bincount(ids, minlength=vocab_size).to(torch.float32)
        self._prev = int(prompt_ids[-1]) if len(prompt_ids) else 0

    def choose(self, logits: torch.Tensor, allowed: torch.Tensor | None = None) -> Choice:
        """Pick the next token from one row of raw logits; `allowed` is the grammar's bool mask."""
        scores = logits.to(torch.float32).clone()
        if self.params.watermark:
            scores[green_mask(self._prev, self.vocab_size)] += WATERMARK_DELTA
        if self._counts is not None:
            if self._rep is not None:
                seen = self._counts > 0
                picked = scores[seen]
                scores[seen] = torch.where(picked < 0, picked * self._rep, picked / self._rep)
            if self._freq is not None:
                scores -= self._freq * self._counts / max(self._length, 1)
        if allowed is not None:
            scores.masked_fill_(~allowed, float("-inf"))
        if self.sampling:
            scores = self._warp(scores)
        logprobs = torch.log_softmax(scores, dim=-1)
        if self.sampling:
            # Inverse-CDF draw: one uniform from the request's generator (multinomial was 5x slower
            # on a 49k vocabulary). Zero-probability tokens never win: their CDF step is empty.
            cdf = torch.cumsum(logprobs.exp(), dim=0)
            u = torch.rand(1, generator=self.generator) * cdf[-1]
            token = min(int(torch.searchsorted(cdf, u, right=True).item()), cdf.numel() - 1)
            while token > 0 and not math.isfinite(float(logprobs[token])):  # float round-off
                token -= 1
        else:
            token = int(torch.argmax(scores).item())
        top: tuple[tuple[int, float], ...] = ()
        n = self.params.top_n_tokens
        if n > 0:
            values, indices = torch.topk(logprobs, min(n, logprobs.numel()))
            top = tuple(
                (int(i), float(v))
                for v, i in zip(values.tolist(), indices.tolist(), strict=True)
                if math.isfinite(v)
            )
        return Choice(token_id=token, logprob=float(logprobs[token]), top=top)

    def accept(self, token_id: int) -> None:
        """Record the chosen token (penalty counts, watermark context)."""
        self._prev = token_id
        self._length += 1
        if self._counts is not None and 0 <= token_id < self.vocab_size:
            self._counts[token_id] += 1

    def _warp(self, scores: torch.Tensor) -> torch.Tensor:
        p = self.params
        if p.temperature != 1.0:
            scores = scores / p.temperature
        if p.top_k is not None and 0 < p.top_k < scores.numel():
            kth = torch.topk(scores, p.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if p.top_p is not None and p.top_p < 1.0:
            scores = top_p_filter(scores, p.top_p)
        if p.typical_p is not None and p.typical_p < 1.0:
            scores = typical_filter(scores, p.typical_p)
        return scores


def top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches `top_p` (>= 1 token)."""
    alive = torch.isfinite(scores).nonzero().squeeze(1)
    if 0 < alive.numel() < scores.numel() // 2:  # after top-k: sort the survivors only
        kept = top_p_filter(scores[alive], top_p)
        return torch.full_like(scores, float("-inf")).index_copy_(0, alive, kept)
    sorted_scores, order = torch.sort(scores, descending=False)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p)
    remove[-1] = False
    return scores.masked_fill(remove.scatter(0, order, remove), float("-inf"))


def typical_filter(scores: torch.Tensor, mass: float) -> torch.Tensor:
    """Locally typical sampling (Meister et al.): keep tokens whose surprise is closest to the
    entropy until `mass` probability is covered (>= 1 token)."""
    logp = torch.log_softmax(scores, dim=-1)
    p = logp.exp()
    entropy = -(logp * p).nansum()
    shifted = torch.abs(-logp - entropy)
    sorted_shift, order = torch.sort(shifted)
    cumulative = scores.gather(0, order).softmax(dim=-1).cumsum(dim=-1)
    last = int((cumulative < mass).sum().clamp(max=scores.numel() - 1))
    remove_sorted = sorted_shift > sorted_shift[last]
    remove_sorted[0] = False
    return scores.masked_fill(remove_sorted.scatter(0, order, remove_sorted), float("-inf"))
