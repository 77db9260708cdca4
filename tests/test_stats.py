"""Statistics that do not overclaim: prompt-level bootstrap, exact sign-flip test, Holm, detection limits."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from runner.metrics.stats import (cluster_mean_ci, cluster_ratio_ci, holm, min_detectable_difference,
                                  min_prompts_for_significance, paired_prompt_delta, sign_flip_p)


def test_ci_contains_the_mean_and_shrinks_with_more_prompts():
    rng = np.random.default_rng(0)
    small = [[v] for v in rng.normal(1.0, 1.0, 30)]
    large = [[v] for v in rng.normal(1.0, 1.0, 3000)]
    m_s, lo_s, hi_s = cluster_mean_ci(small)
    m_l, lo_l, hi_l = cluster_mean_ci(large)
    assert lo_s <= m_s <= hi_s and lo_l <= m_l <= hi_l
    assert m_s == pytest.approx(np.mean(small))
    assert (hi_l - lo_l) < (hi_s - lo_s) / 5
    assert lo_l < 1.0 < hi_l


def test_repeats_of_a_prompt_move_together():
    """Ten identical repeats of 4 prompts are 4 observations, not 40: the interval must not shrink."""
    prompts = [[1.0], [3.0], [5.0], [9.0]]
    repeated = [g * 10 for g in prompts]
    _, lo, hi = cluster_mean_ci(prompts)
    _, lo10, hi10 = cluster_mean_ci(repeated)
    assert (lo10, hi10) == pytest.approx((lo, hi))
    flat = [[v] for g in repeated for v in g]  # treating the 40 answers as independent would overclaim
    _, lo_flat, hi_flat = cluster_mean_ci(flat)
    assert hi_flat - lo_flat < (hi - lo) / 2


def test_no_interval_below_three_prompts():
    assert math.isnan(cluster_mean_ci([[1.0, 2.0, 3.0], [4.0, 5.0]])[1])  # many answers, only 2 prompts
    mean, lo, hi = cluster_mean_ci([[1.0], [2.0], [6.0]])
    assert mean == 3.0 and lo <= mean <= hi
    assert all(math.isnan(v) for v in cluster_mean_ci([]))
    assert cluster_mean_ci([[1.0, math.nan], [math.nan], [3.0]])[0] == 2.0  # NaNs dropped, empty prompts too
    assert cluster_mean_ci([[1.0], [2.0], [6.0]], seed=3) == cluster_mean_ci([[1.0], [2.0], [6.0]], seed=3)


def test_ratio_ci_resamples_numerator_and_denominator_together():
    point, lo, hi = cluster_ratio_ci([10.0, 20, 30, 40], [1.0, 2, 3, 4])
    assert point == lo == hi == 10.0  # every resample has the same ratio


def test_sign_flip_is_exact_for_small_n():
    d = [0.5, 1.0, -0.2, 2.0, 0.7]
    count = sum(abs(np.mean(np.multiply(s, d))) >= abs(np.mean(d)) - 1e-12
                for s in itertools.product((1, -1), repeat=len(d)))
    assert sign_flip_p(d) == pytest.approx(count / 2 ** len(d))


@pytest.mark.parametrize("n", range(1, 9))
def test_nothing_is_significant_below_the_smallest_possible_n(n):
    """All n differences positive and huge: the exact test's smallest p is 2/2^n."""
    p = sign_flip_p([10.0] * n)
    assert p == pytest.approx(2 / 2 ** n)
    assert (p <= 0.05) == (n >= min_prompts_for_significance(0.05))
    assert min_prompts_for_significance(0.05) == 6


def test_sign_flip_large_n_uses_seeded_monte_carlo():
    rng = np.random.default_rng(1)
    shifted = rng.normal(0.5, 1.0, 40)
    noise = rng.normal(0.0, 1.0, 40)
    assert sign_flip_p(shifted) < 0.01 and sign_flip_p(noise) > 0.05
    assert sign_flip_p(noise, seed=4) == sign_flip_p(noise, seed=4)


def test_holm_adjusts_and_keeps_nan_out_of_the_family():
    adjusted = holm([0.01, 0.04, math.nan, 0.03])
    assert adjusted[0] == pytest.approx(0.03) and adjusted[3] == pytest.approx(0.06)
    assert adjusted[1] == pytest.approx(0.06)  # monotone: never below a smaller p's adjustment
    assert math.isnan(adjusted[2])
    assert holm([0.5, 0.9]) == [1.0, 1.0]


def test_minimum_detectable_difference():
    d = np.random.default_rng(2).normal(0.0, 1.0, 30)
    mdd30 = min_detectable_difference(d)
    mdd120 = min_detectable_difference(np.tile(d, 4))
    assert 0.3 < mdd30 < 1.0 and mdd120 < mdd30 / 1.7  # shrinks like 1/sqrt(n)
    assert min_detectable_difference([1.0, 2.0, 3.0]) == math.inf  # below 6 prompts nothing is detectable


def test_paired_prompt_delta():
    base = {f"p{i}": [5.0, 6.0] for i in range(10)}
    better = {f"p{i}": [7.0, 8.5] for i in range(10)}
    d = paired_prompt_delta(base, better)
    assert d["delta"] == pytest.approx(2.25) and d["n"] == 10 and d["p"] < 0.01
    assert d["lo"] == d["hi"] == pytest.approx(2.25)
    same = paired_prompt_delta(base, base)
    assert same["delta"] == 0 and same["p"] == 1.0
    few = paired_prompt_delta({"a": [1.0], "b": [1.0]}, {"a": [3.0], "b": [3.0]})
    assert math.isnan(few["lo"]) and few["p"] == 0.5 and few["n"] == 2
    with pytest.raises(ValueError, match="values"):
        paired_prompt_delta({"a": [1.0, 2.0]}, {"a": [1.0]})


def test_prompts_needed_against_a_hand_computation():
    """sd 1.036, target 0.5, alpha 0.05, power 0.8: the normal approximation gives (2.8016 · 1.036 / 0.5)² = 33.7,
    and the paired t test needs n = 36 (t_{0.975,35} + t_{0.8,35} = 2.030 + 0.852 = 2.882; 2.882 · 1.036 / 6 = 0.4977,
    while n = 35 gives 0.5052)."""
    from runner.metrics.stats import prompts_needed

    assert prompts_needed(1.036, 0.5) == 36
    assert prompts_needed(1.036, 0.25) > 4 * 33  # four times the precision takes about four times the prompts
    assert prompts_needed(0.01, 5.0) == min_prompts_for_significance(0.05)  # never below what the test can reach
    assert math.isnan(prompts_needed(0.0, 0.5)) and math.isnan(prompts_needed(1.0, 0.0))
    assert math.isnan(min_detectable_difference([0.5] * 10))  # no spread: no limit to estimate
