"""Logits processing against transformers' reference processors, seeds, and the watermark."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from localtgi.engine_types import SamplingParams
from localtgi.sampling import (
    TokenChooser,
    green_mask,
    is_sampling,
    top_p_filter,
    typical_filter,
    watermark_z_score,
)

V = 300


def logits(seed: int, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(V, generator=torch.Generator().manual_seed(seed)) * scale


def finite_set(scores: torch.Tensor) -> set[int]:
    return set(torch.isfinite(scores).nonzero().squeeze(1).tolist())


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.99])
def test_top_p_matches_transformers(top_p: float) -> None:
    for seed in range(5):
        x = logits(seed)
        ref = TopPLogitsWarper(top_p)(None, x.unsqueeze(0))[0]
        assert finite_set(top_p_filter(x, top_p)) == finite_set(ref)


def test_top_p_after_top_k_sorts_survivors_only() -> None:
    x = logits(1)
    kth = torch.topk(x, 10).values[-1]
    masked = x.masked_fill(x < kth, float("-inf"))
    ref = TopPLogitsWarper(0.7)(None, masked.unsqueeze(0))[0]
    assert finite_set(top_p_filter(masked, 0.7)) == finite_set(ref)


@pytest.mark.parametrize("mass", [0.2, 0.5, 0.95])
def test_typical_p_matches_transformers(mass: float) -> None:
    for seed in range(5):
        x = logits(seed)
        ref = TypicalLogitsWarper(mass)(None, x.unsqueeze(0))[0]
        assert finite_set(typical_filter(x, mass)) == finite_set(ref)


def test_top_k_and_temperature_warp_like_transformers() -> None:
    x = logits(3)
    chooser = TokenChooser(SamplingParams(top_k=7, temperature=0.5, seed=1), [1, 2], V)
    warped = chooser._warp(x.clone())
    ref = TopKLogitsWarper(7)(None, (x / 0.5).unsqueeze(0))[0]
    assert torch.equal(warped, ref)


def test_repetition_penalty_matches_transformers() -> None:
    prompt = [5, 9, 9, 17]
    x = logits(4)
    chooser = TokenChooser(SamplingParams(repetition_penalty=1.3, top_n_tokens=V), prompt, V)
    got = chooser.choose(x)
    ref = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([prompt]), x.unsqueeze(0))[0]
    ref_lp = torch.log_softmax(ref, -1)
    assert got.token_id == int(ref.argmax())
    assert got.logprob == pytest.approx(float(ref_lp.max()), abs=1e-5)
    assert dict(got.top)[9] == pytest.approx(float(ref_lp[9]), abs=1e-5)


def test_frequency_penalty_is_count_over_length() -> None:
    prompt = [3, 3, 3, 8]
    x = torch.zeros(V)
    x[3], x[8], x[20] = 1.0, 0.9, 0.5
    chooser = TokenChooser(SamplingParams(frequency_penalty=2.0, top_n_tokens=3), prompt, V)
    choice = chooser.choose(x)
    # 3: 1.0 - 2*3/4 = -0.5;  8: 0.9 - 2*1/4 = 0.4;  20: 0.5 untouched -> 20 wins.
    assert choice.token_id == 20
    assert [i for i, _ in choice.top[:2]] == [20, 8]
    chooser.accept(20)
    again = chooser.choose(x)  # 20 now penalised by 2*1/5
    assert again.token_id == 8


def test_logprob_is_of_the_final_distribution() -> None:
    x = logits(5)
    params = SamplingParams(do_sample=True, seed=3, temperature=0.5, top_k=5, top_n_tokens=5)
    choice = TokenChooser(params, [1], V).choose(x)
    kth = torch.topk(x / 0.5, 5).values[-1]
    final = torch.log_softmax((x / 0.5).masked_fill(x / 0.5 < kth, float("-inf")), -1)
    assert choice.logprob == pytest.approx(float(final[choice.token_id]), abs=1e-5)
    assert len(choice.top) == 5
    assert math.fsum(math.exp(lp) for _, lp in choice.top) == pytest.approx(1.0, abs=1e-5)


def test_same_seed_same_draws_and_different_seed_differs() -> None:
    def draws(seed: int) -> list[int]:
        chooser = TokenChooser(SamplingParams(do_sample=True, seed=seed), [1], V)
        out = []
        for step in range(40):
            c = chooser.choose(logits(100 + step, scale=1.0))
            chooser.accept(c.token_id)
            out.append(c.token_id)
        return out

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


def test_sampling_draws_follow_the_distribution() -> None:
    x = torch.full((V,), float("-inf"))
    x[10], x[11] = math.log(0.75), math.log(0.25)
    chooser = TokenChooser(SamplingParams(do_sample=True, seed=0), [1], V)
    picks = [chooser.choose(x).token_id for _ in range(2000)]
    assert set(picks) == {10, 11}
    assert picks.count(10) / 2000 == pytest.approx(0.75, abs=0.04)


def test_is_sampling_follows_tgi() -> None:
    assert not is_sampling(SamplingParams())
    assert is_sampling(SamplingParams(do_sample=True))
    assert is_sampling(SamplingParams(temperature=0.7))
    assert is_sampling(SamplingParams(top_k=5))
    assert is_sampling(SamplingParams(top_p=0.9))
    assert is_sampling(SamplingParams(typical_p=0.9))
    assert not is_sampling(SamplingParams(repetition_penalty=1.2, seed=4))
    assert TokenChooser(SamplingParams(), [1], V).seed is None


def test_grammar_mask_is_respected_and_greedy_picks_best_allowed() -> None:
    x = logits(6)
    allowed = torch.zeros(V, dtype=torch.bool)
    allowed[[4, 40, 140]] = True
    choice = TokenChooser(SamplingParams(top_n_tokens=5), [1], V).choose(x, allowed)
    assert choice.token_id == max((4, 40, 140), key=lambda i: float(x[i]))
    assert {i for i, _ in choice.top} == {4, 40, 140}


def test_green_list_is_half_the_vocabulary_and_keyed_by_previous_token() -> None:
    a, b = green_mask(17, 1000), green_mask(18, 1000)
    assert int(a.sum()) == 500
    assert torch.equal(a, green_mask(17, 1000))
    assert not torch.equal(a, b)


def test_watermark_is_detected_and_plain_sampling_is_not() -> None:
    vocab = 1000

    def generate(watermark: bool) -> list[int]:
        params = SamplingParams(do_sample=True, seed=11, watermark=watermark)
        chooser = TokenChooser(params, [7], vocab)
        tokens = [7]
        for step in range(200):
            x = torch.randn(vocab, generator=torch.Generator().manual_seed(step)) * 1.5
            c = chooser.choose(x)
            chooser.accept(c.token_id)
            tokens.append(c.token_id)
        return tokens

    marked = watermark_z_score(generate(True), vocab)
    plain = watermark_z_score(generate(False), vocab)
    assert marked > 6.0
    assert abs(plain) < 3.0
