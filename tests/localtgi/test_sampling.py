"""Logits processing (numpy) against transformers' reference processors (torch), seeds, and the watermark."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
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
    draw,
    green_mask,
    is_sampling,
    log_softmax,
    top_p_filter,
    typical_filter,
    watermark_z_score,
)

V = 300
F32 = npt.NDArray[np.float32]


def logits(seed: int, scale: float = 3.0, vocab: int = V) -> F32:
    return (np.random.default_rng(seed).standard_normal(vocab) * scale).astype(np.float32)


def ref_row(x: F32) -> torch.Tensor:
    """The same row as a [1, vocab] torch batch for transformers' processors."""
    return torch.from_numpy(x.copy()).unsqueeze(0)


def finite_set(scores: F32 | torch.Tensor) -> set[int]:
    return set(np.flatnonzero(np.isfinite(np.asarray(scores))).tolist())


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.99])
def test_top_p_matches_transformers(top_p: float) -> None:
    for seed in range(5):
        x = logits(seed)
        ref = TopPLogitsWarper(top_p)(None, ref_row(x))[0]
        got = top_p_filter(x, top_p)
        assert got.dtype == np.float32 and finite_set(got) == finite_set(ref)
        kept = np.isfinite(got)
        assert np.array_equal(got[kept], x[kept])  # survivors are untouched


@pytest.mark.parametrize("scale", [0.3, 3.0, 8.0])
def test_filters_match_transformers_on_a_real_sized_vocabulary(scale: float) -> None:
    # Flat rows need a sort of the whole vocabulary; peaked ones only of its head. Sums of tens of
    # thousands of float32 terms, added in another order than transformers adds them, may move the
    # cut by one token.
    for seed in range(2):
        x = logits(seed, scale=scale, vocab=49152)
        for top_p in (0.5, 0.95):
            ref = TopPLogitsWarper(top_p)(None, ref_row(x))[0]
            assert len(finite_set(top_p_filter(x, top_p)) ^ finite_set(ref)) <= 1
        ref = TypicalLogitsWarper(0.9)(None, ref_row(x))[0]
        assert len(finite_set(typical_filter(x, 0.9)) ^ finite_set(ref)) <= 1


def test_top_p_after_top_k_keeps_survivors_only() -> None:
    x = logits(1)
    kth = np.sort(x)[-10]
    masked = np.where(x < kth, np.float32(-np.inf), x)
    ref = TopPLogitsWarper(0.7)(None, ref_row(masked))[0]
    assert finite_set(top_p_filter(masked, 0.7)) == finite_set(ref)


@pytest.mark.parametrize("mass", [0.2, 0.5, 0.95])
def test_typical_p_matches_transformers(mass: float) -> None:
    for seed in range(5):
        x = logits(seed)
        ref = TypicalLogitsWarper(mass)(None, ref_row(x))[0]
        assert finite_set(typical_filter(x, mass)) == finite_set(ref)


def test_typical_p_after_top_k_matches_transformers() -> None:
    x = logits(8)
    masked = np.where(x < np.sort(x)[-20], np.float32(-np.inf), x)
    ref = TypicalLogitsWarper(0.5)(None, ref_row(masked))[0]
    assert finite_set(typical_filter(masked, 0.5)) == finite_set(ref)


def test_log_softmax_matches_torch_and_keeps_minus_inf() -> None:
    x = logits(9)
    x[[3, 30]] = -np.inf
    got = log_softmax(x)
    want = torch.log_softmax(torch.from_numpy(x), -1).numpy()
    assert got.dtype == np.float32
    assert np.array_equal(np.isfinite(got), np.isfinite(want))
    np.testing.assert_allclose(got[np.isfinite(got)], want[np.isfinite(want)], atol=1e-5)


def test_top_k_and_temperature_warp_like_transformers() -> None:
    x = logits(3)
    chooser = TokenChooser(SamplingParams(top_k=7, temperature=0.5, seed=1), [1, 2], V)
    warped = chooser._warp(x.copy())
    ref = TopKLogitsWarper(7)(None, ref_row(x / np.float32(0.5)))[0]
    assert warped.dtype == np.float32 and np.array_equal(warped, ref.numpy())


def test_repetition_penalty_matches_transformers() -> None:
    prompt = [5, 9, 9, 17]
    x = logits(4)
    chooser = TokenChooser(SamplingParams(repetition_penalty=1.3, top_n_tokens=V), prompt, V)
    got = chooser.choose(x)
    ref = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([prompt]), ref_row(x))[0]
    ref_lp = torch.log_softmax(ref, -1)
    assert got.token_id == int(ref.argmax())
    assert got.logprob == pytest.approx(float(ref_lp.max()), abs=1e-5)
    assert dict(got.top)[9] == pytest.approx(float(ref_lp[9]), abs=1e-5)
    assert np.array_equal(x, logits(4))  # the caller's row is not modified


def test_top_tokens_are_the_best_logprobs_in_order() -> None:
    x = logits(12)
    x[50] = -np.inf
    choice = TokenChooser(SamplingParams(top_n_tokens=V), [1], V).choose(x)
    lp = log_softmax(x)
    want = [int(i) for i in np.argsort(-lp, kind="stable") if np.isfinite(lp[i])]
    assert [i for i, _ in choice.top] == want  # every finite token, best first, -inf left out
    assert [i for i, _ in TokenChooser(SamplingParams(top_n_tokens=3), [1], V).choose(x).top] == want[:3]


def test_greedy_logprob_alone_is_the_full_log_softmax_entry_bit_for_bit() -> None:
    # Greedy rows without top tokens skip building every log-probability; the one they report
    # must still be exactly log_softmax's, and no path may write into the caller's logits.
    rng = np.random.default_rng(21)
    for vocab in (49152, V):
        for _ in range(20):
            x = (rng.standard_normal(vocab) * rng.uniform(0.5, 8)).astype(np.float32)
            x[rng.random(vocab) < 0.1] = -np.inf
            kept = x.copy()
            choice = TokenChooser(SamplingParams(), [1], vocab).choose(x)
            full = TokenChooser(SamplingParams(top_n_tokens=1), [1], vocab).choose(x)
            assert choice.token_id == full.token_id == int(np.argmax(x))
            assert choice.logprob == full.logprob == float(log_softmax(x)[choice.token_id])
            sampled = TokenChooser(SamplingParams(do_sample=True, seed=1), [1], vocab).choose(x)
            assert sampled.logprob == float(log_softmax(x)[sampled.token_id])
            assert np.array_equal(x, kept)


def test_frequency_penalty_is_count_over_length() -> None:
    prompt = [3, 3, 3, 8]
    x = np.zeros(V, dtype=np.float32)
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
    t = torch.from_numpy(x) / 0.5
    kth = torch.topk(t, 5).values[-1]
    final = torch.log_softmax(t.masked_fill(t < kth, float("-inf")), -1)
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


def test_the_seed_drives_numpys_pcg64_stream() -> None:
    # Documented: a seed gives numpy's stream (not torch's). Uniform logits: token = floor(u * V).
    for seed in (0, 7, 2**63 + 5):
        u = np.random.default_rng(seed).random()
        chooser = TokenChooser(SamplingParams(do_sample=True, seed=seed), [1], V)
        assert chooser.choose(np.zeros(V, np.float32)).token_id == int(u * V)


def test_sampling_never_draws_an_excluded_token() -> None:
    x = np.full(V, -np.inf, dtype=np.float32)
    x[0] = 0.0  # only the first token is alive: every uniform must land on it
    chooser = TokenChooser(SamplingParams(do_sample=True, seed=1), [1], V)
    assert {chooser.choose(x).token_id for _ in range(200)} == {0}
    x = logits(13)
    x[[V - 1, 77]] = 1.0  # equally likely, one at each end of the CDF's live steps
    allowed = np.zeros(V, dtype=bool)
    allowed[[V - 1, 77]] = True
    picks = {chooser.choose(x, allowed).token_id for _ in range(200)}
    assert picks == {V - 1, 77}


def test_sampling_draws_follow_the_distribution() -> None:
    x = np.full(V, -np.inf, dtype=np.float32)
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
    allowed = np.zeros(V, dtype=bool)
    allowed[[4, 40, 140]] = True
    choice = TokenChooser(SamplingParams(top_n_tokens=5), [1], V).choose(x, allowed)
    assert choice.token_id == max((4, 40, 140), key=lambda i: float(x[i]))
    assert {i for i, _ in choice.top} == {4, 40, 140}


def test_green_list_is_half_the_vocabulary_and_keyed_by_previous_token() -> None:
    a, b = green_mask(17, 1000), green_mask(18, 1000)
    assert a.dtype == np.bool_ and int(a.sum()) == 500
    assert np.array_equal(a, green_mask(17, 1000))
    assert not np.array_equal(a, b)
    assert not a.flags.writeable  # cached and shared between requests


def test_watermark_is_detected_and_plain_sampling_is_not() -> None:
    vocab = 1000

    def generate(watermark: bool) -> list[int]:
        params = SamplingParams(do_sample=True, seed=11, watermark=watermark)
        chooser = TokenChooser(params, [7], vocab)
        tokens = [7]
        for step in range(200):
            x = logits(step, scale=1.5, vocab=vocab)
            c = chooser.choose(x)
            chooser.accept(c.token_id)
            tokens.append(c.token_id)
        return tokens

    marked = watermark_z_score(generate(True), vocab)
    plain = watermark_z_score(generate(False), vocab)
    assert marked > 6.0
    assert abs(plain) < 3.0


def test_two_level_draw_is_the_inverse_cdf_and_never_picks_a_dead_token() -> None:
    rng = np.random.default_rng(5)
    for vocab in (49152, 300, 257, 7):
        x = (rng.standard_normal(vocab) * 4).astype(np.float32)
        x[rng.random(vocab) < 0.3] = -np.inf  # dead tokens, some whole blocks among them
        x[rng.integers(vocab)] = 0.0
        logprobs = log_softmax(x)
        cdf = np.cumsum(np.exp(logprobs).astype(np.float64))
        for u in [0.0, 1.0 - 1e-16, *rng.random(200)]:
            token = draw(logprobs, float(u))
            assert np.isfinite(logprobs[token])
            want = min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), vocab - 1)
            if np.isfinite(logprobs[want]) and abs(u * cdf[-1] - cdf[want]) > 1e-9:
                assert token == want  # the same token as one flat CDF, away from float ties


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1e-300, seed=1),
        SamplingParams(temperature=5e-324, seed=1, top_n_tokens=3),
        SamplingParams(temperature=1e300, seed=1),
        SamplingParams(top_p=1e-300, seed=1),
        SamplingParams(repetition_penalty=1e-300, top_n_tokens=2),
        SamplingParams(repetition_penalty=1e300, top_n_tokens=2),
        SamplingParams(temperature=1e-300, watermark=True, top_k=5, top_p=0.5, typical_p=0.5, seed=2),
    ],
)
def test_extreme_parameters_choose_a_token_without_overflow(params: SamplingParams) -> None:
    """TGI accepts any positive temperature and penalty: the extremes are their limits (greedy,
    uniform, a total penalty), with no NaN, no warning (warnings fail the tests) and no empty
    distribution."""
    x = logits(6)
    chooser = TokenChooser(params, [5, 9, int(np.argmax(x))], V)
    choice = chooser.choose(x)
    assert 0 <= choice.token_id < V and np.isfinite(choice.logprob)
    assert all(np.isfinite(lp) for _, lp in choice.top)
    if params.temperature < 1e-30 and not params.watermark:
        assert choice.token_id == int(np.argmax(x)) and choice.logprob == 0.0
    if params.top_p is not None and params.top_p < 1e-30:
        assert choice.token_id == int(np.argmax(x))


def test_a_very_hot_temperature_is_uniform_over_the_allowed_tokens() -> None:
    x = logits(7)
    allowed = np.zeros(V, dtype=bool)
    allowed[[3, 30, 60, 90]] = True
    choice = TokenChooser(SamplingParams(temperature=1e300, seed=3), [1], V).choose(x, allowed)
    assert choice.token_id in (3, 30, 60, 90)
    assert choice.logprob == pytest.approx(-np.log(4), abs=1e-6)
