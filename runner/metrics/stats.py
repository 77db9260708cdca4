"""Statistics that do not overclaim: prompt-level bootstrap CIs, an exact paired test, Holm, detection limits.

Answers to one prompt are not independent (repeats share the prompt, judge repeats share the answer), so
the unit of resampling and testing is the prompt: every value of a prompt moves together.

* CIs: seeded percentile bootstrap over prompts; none (NaN) from fewer than `MIN_PROMPTS_FOR_CI` prompts.
* Paired differences (build − baseline) are averaged per prompt, then tested with an exact sign-flip
  permutation test (all 2^n sign patterns; seeded Monte Carlo above `EXACT_MAX_N` prompts). Its smallest
  two-sided p-value is 2/2^n, so below `min_prompts_for_significance(alpha)` prompts (6 at alpha 0.05)
  nothing can be significant, and nothing is called so.
* Many cells × criteria are tested at once: p-values are Holm-adjusted per family of tests.
* The minimum detectable difference (80 % power, paired t approximation) says how small a difference the
  sweep could have found: "not distinguishable" is no evidence of "no difference" below it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats as sps

MIN_PROMPTS_FOR_CI = 3
EXACT_MAX_N = 16
N_PERMUTATIONS = 20000
POWER = 0.8
_BATCH_ELEMS = 1 << 22  # resample indices drawn per batch, bounds memory for long inputs


def _percentiles(reps: np.ndarray, level: float) -> tuple[float, float]:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    reps = reps[np.isfinite(reps)]
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(reps, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def cluster_ratio_ci(num: Sequence[float], den: Sequence[float], n_boot: int = 2000, level: float = 0.95,
                     seed: int = 0) -> tuple[float, float, float]:
    """(Σnum / Σden, lo, hi) with a bootstrap over clusters: cluster i contributes (num[i], den[i]) together.

    A mean over prompts with several values each is num = per-prompt sum, den = per-prompt count. No
    interval (NaN) from fewer than MIN_PROMPTS_FOR_CI clusters with den > 0.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    keep = (den > 0) & np.isfinite(num) & np.isfinite(den)
    num, den = num[keep], den[keep]
    n = len(num)
    if n == 0:
        return math.nan, math.nan, math.nan
    point = float(num.sum() / den.sum())
    if n < MIN_PROMPTS_FOR_CI:
        return point, math.nan, math.nan
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    batch = max(1, _BATCH_ELEMS // n)
    for s in range(0, n_boot, batch):
        idx = rng.integers(0, n, size=(min(s + batch, n_boot) - s, n))
        with np.errstate(divide="ignore", invalid="ignore"):
            reps[s:s + len(idx)] = num[idx].sum(axis=1) / den[idx].sum(axis=1)
    lo, hi = _percentiles(reps, level)
    return point, lo, hi


def cluster_mean_ci(groups: Sequence[Sequence[float]], n_boot: int = 2000, level: float = 0.95,
                    seed: int = 0) -> tuple[float, float, float]:
    """(mean of every value, lo, hi), resampling the groups (prompts); NaN values are dropped."""
    sums, counts = [], []
    for g in groups:
        x = np.asarray(g, np.float64)
        x = x[~np.isnan(x)]
        sums.append(x.sum())
        counts.append(len(x))
    return cluster_ratio_ci(sums, counts, n_boot, level, seed)


def min_prompts_for_significance(alpha: float = 0.05) -> int:
    """The smallest n whose exact sign-flip test can reach p <= alpha (its smallest p is 2 / 2^n)."""
    return max(1, math.ceil(1 - math.log2(alpha)))


def sign_flip_p(d: Sequence[float], seed: int = 0) -> float:
    """Two-sided p-value of mean(d) = 0 under random signs (paired, exact for n <= EXACT_MAX_N)."""
    d = np.asarray(d, np.float64)
    d = d[~np.isnan(d)]
    n = len(d)
    if n == 0:
        return math.nan
    observed = abs(d.mean()) - 1e-12 * max(1.0, abs(d).max())  # ties count as extreme
    if n <= EXACT_MAX_N:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
        return float(np.mean(np.abs(signs @ d / n) >= observed))
    signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(N_PERMUTATIONS, n))
    return float((1 + np.sum(np.abs(signs @ d / n) >= observed)) / (1 + N_PERMUTATIONS))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and is not counted in the family)."""
    p = np.asarray(pvalues, np.float64)
    valid = np.flatnonzero(~np.isnan(p))
    out = np.full(len(p), math.nan)
    order = valid[np.argsort(p[valid], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def min_detectable_difference(d: Sequence[float], alpha: float = 0.05, power: float = POWER) -> float:
    """Smallest mean paired difference detectable with `power`: (t_{1-α/2} + t_power) · sd / √n.

    inf when n is below what the exact test needs to ever reach alpha; NaN without a spread to measure.
    """
    d = np.asarray(d, np.float64)
    d = d[~np.isnan(d)]
    n = len(d)
    if n < max(2, min_prompts_for_significance(alpha)):
        return math.inf
    sd = float(d.std(ddof=1))
    if sd == 0:
        return math.nan  # every prompt moved alike: no spread to estimate a limit from
    t = sps.t.ppf(1 - alpha / 2, n - 1) + sps.t.ppf(power, n - 1)
    return float(t * sd / math.sqrt(n))


def prompts_needed(sd: float, target: float, alpha: float = 0.05, power: float = POWER) -> float:
    """Prompts a paired test needs to detect a mean difference `target` with `power`, given the spread `sd` of
    per-prompt differences: the smallest n with (t_{1-α/2,n-1} + t_{power,n-1}) · sd / √n ≤ target, and at
    least what the exact sign-flip test needs to reach alpha at all. NaN without a spread to go by."""
    if not (sd > 0 and target > 0):
        return math.nan
    floor = max(2, min_prompts_for_significance(alpha))
    z = sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)
    n = max(floor, math.ceil((z * sd / target) ** 2))  # the normal answer is a lower bound: t quantiles are larger
    while (sps.t.ppf(1 - alpha / 2, n - 1) + sps.t.ppf(power, n - 1)) * sd / math.sqrt(n) > target:
        n += 1
    return float(n)


def paired_prompt_delta(base: Mapping[str, Sequence[float]], build: Mapping[str, Sequence[float]],
                        n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Paired difference build − baseline, per prompt (values aligned by repeat), summarised over prompts.

    Returns delta (mean of per-prompt mean differences), lo/hi (bootstrap over prompts; NaN below
    MIN_PROMPTS_FOR_CI), p (exact sign-flip test, unadjusted), mdd (minimum detectable difference) and
    n (prompts with at least one valid pair).
    """
    per_prompt = []
    for pid in sorted(set(base) & set(build)):
        a, b = np.asarray(base[pid], np.float64), np.asarray(build[pid], np.float64)
        if a.shape != b.shape:
            raise ValueError(f"prompt {pid!r}: {len(a)} baseline values vs {len(b)} build values")
        diff = b - a
        diff = diff[~np.isnan(diff)]
        if len(diff):
            per_prompt.append(float(diff.mean()))
    delta, lo, hi = cluster_mean_ci([[x] for x in per_prompt], n_boot, level, seed)
    alpha = 1.0 - level
    sd = float(np.std(per_prompt, ddof=1)) if len(per_prompt) > 1 else math.nan
    return {"delta": delta, "lo": lo, "hi": hi, "p": sign_flip_p(per_prompt, seed), "sd": sd,
            "mdd": min_detectable_difference(per_prompt, alpha) if per_prompt else math.nan, "n": len(per_prompt)}
