"""Bootstrap CIs and paired deltas: coverage of the mean, shrinkage, distinguishability."""

from __future__ import annotations

import math

import numpy as np
import pytest

from runner.metrics.stats import bootstrap_ci, paired_delta


def test_ci_contains_mean_and_shrinks():
    rng = np.random.default_rng(0)
    small = rng.normal(1.0, 1.0, 30)
    large = rng.normal(1.0, 1.0, 3000)
    m_s, lo_s, hi_s = bootstrap_ci(small)
    m_l, lo_l, hi_l = bootstrap_ci(large)
    assert lo_s <= m_s <= hi_s and lo_l <= m_l <= hi_l
    assert m_s == small.mean()
    assert (hi_l - lo_l) < (hi_s - lo_s) / 5
    assert lo_l < 1.0 < hi_l


def test_ci_edge_cases_and_determinism():
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    assert all(math.isnan(v) for v in bootstrap_ci([float("nan")]))
    assert bootstrap_ci([2.5]) == (2.5, 2.5, 2.5)
    assert bootstrap_ci([1.0, float("nan"), 3.0])[0] == 2.0
    values = np.random.default_rng(1).random(50)
    assert bootstrap_ci(values, seed=7) == bootstrap_ci(values, seed=7)
    m, lo, hi = bootstrap_ci(values, level=0.5)
    _, lo95, hi95 = bootstrap_ci(values)
    assert lo95 < lo <= m <= hi < hi95


def test_paired_delta_shift_vs_noise():
    rng = np.random.default_rng(2)
    a = rng.normal(5.0, 1.0, 100)
    shifted = paired_delta(a, a + 0.5 + rng.normal(0.0, 0.2, 100))
    assert shifted["distinguishable"] and shifted["n"] == 100
    assert shifted["lo"] > 0 and 0.4 < shifted["delta"] < 0.6
    noise = paired_delta(a, a + rng.normal(0.0, 0.2, 100))
    assert not noise["distinguishable"] and noise["lo"] < 0 < noise["hi"]


def test_paired_delta_nan_pairs_and_single_pair():
    out = paired_delta([1.0, 2.0, float("nan")], [2.0, 3.0, 4.0])
    assert out["n"] == 2 and out["delta"] == 1.0
    assert not paired_delta([1.0], [2.0])["distinguishable"]
    with pytest.raises(ValueError, match="shapes"):
        paired_delta([1.0, 2.0], [1.0])
