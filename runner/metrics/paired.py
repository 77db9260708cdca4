"""A build against the baseline on the same prompts: the paired delta, its power, and the three-way verdict.

* **The delta** is the mean of per-prompt differences (build − baseline, repeats averaged per prompt) with a
  95 % interval: the bootstrap-t over prompts (runner/metrics/stats.py), or, where every prompt's difference is
  a whole win, tie or loss of `r` points (one check or pairwise verdict per prompt), Tango's score interval
  (runner/metrics/score_interval.py), which a bootstrap cannot replace when losses are rare.
* **The verdict** against a margin m (the loss that matters): `not_worse` when the interval's lower bound lies
  above −m — a one-sided test at 2.5 %: a build truly worse by m is called not worse at most 2.5 % of the time
  —, `worse` when its upper bound lies below −m, else `inconclusive`. A `not_worse` bound reached where it had
  less than `MIN_POWER` (50 %) power, for a build equal to the baseline at the observed spread, is
  `inconclusive` ("underpowered"): such a bound is not even 20 times likelier for an equal build than for one
  worse by m (Bayarri et al. 2016's rejection ratio, power / error), so it is mostly luck — a random judge on
  7 prompts would otherwise get it for ~5 % of builds.
* **Power, detection limit, prompts needed** at the same one-sided 2.5 % and 80 % power, of the whole rule
  (bound and gate): for the bootstrap-t an integral over the normal sample spread with the bootstrap's own
  critical value; for the score interval a normal approximation at the observed share of discordant prompts.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special
from scipy import stats as sps

from runner.metrics import score_interval
from runner.metrics.stats import LEVEL, MIN_PROMPTS_FOR_CI, N_BOOT, studentized_many

ALPHA_ONE_SIDED = (1 - LEVEL) / 2  # what a verdict risks: the 95 % interval's one tail
POWER = 0.8  # the detection limit and prompts needed are for this power
MIN_POWER = 0.5  # a not_worse claim needs even odds for an equal build: power ≥ 20 × its error rate
VERDICTS = ("not_worse", "worse", "inconclusive")


@dataclass(frozen=True)
class PairedDelta:
    """Build − baseline per prompt, summarized: mean, 95 % interval, its p-value, spread and prompt count."""

    delta: float
    lo: float
    hi: float
    p: float
    sd: float
    n: int
    critical: float = math.nan  # bootstrap-t: the upper t* quantile (lower bound = delta − critical · se)
    outcome_points: float | None = None  # score interval: r, the size of one win or loss
    discordant: float = math.nan  # score interval: share of prompts won or lost

    @property
    def method(self) -> str:
        return "score" if self.outcome_points else "bootstrap-t"

    def power(self, margin: float) -> float:
        """Chance that the verdict calls a build equal to the baseline not worse by `margin`, here (the report's
        power)."""
        if self.outcome_points:
            return self.bound_power(margin)  # the gate rarely binds on discrete counts: left to the bound
        return power_not_worse(self.sd, self.n, margin, self.critical)

    def bound_power(self, margin: float) -> float:
        """Chance that a build equal to the baseline gets a lower bound above −margin, here (the gate's measure)."""
        if self.outcome_points:
            if self.n < MIN_PROMPTS_FOR_CI:
                return math.nan
            return score_interval.power(self.discordant, self.n, margin / self.outcome_points, LEVEL)
        return bound_power(self.sd, self.n, margin, self.critical)

    def mdd(self) -> float:
        """Detection limit: the smallest margin a build equal to the baseline is shown not worse by with 80 %
        power here (inf below 5 prompts; NaN without a spread to go by)."""
        if not self.outcome_points:
            return detectable_margin(self.sd, self.n, self.critical)
        if self.n < MIN_PROMPTS_FOR_CI:
            return math.inf
        r = self.outcome_points
        if self.power(r) < POWER:
            return math.inf
        return optimize.brentq(lambda m: self.power(m) - POWER, 1e-9, r, xtol=1e-9 * r)

    def n_needed(self, margin: float) -> float:
        """Prompts it takes to show a build equal to the baseline not worse by `margin` with 80 % power, at this
        spread (NaN without one to go by)."""
        if not self.outcome_points:
            return prompts_needed(self.sd, margin)
        m = margin / self.outcome_points
        if not 0 < m < 1 or math.isnan(self.discordant):
            return math.nan
        n = MIN_PROMPTS_FOR_CI
        while score_interval.power(self.discordant, n, m, LEVEL) < POWER:
            n = n + 1 if n < 1000 else int(n * 1.01) + 1
        return float(n)


def _critical(n: int, critical: float | None) -> float:
    return sps.t.ppf(1 - ALPHA_ONE_SIDED, n - 1) if critical is None or math.isnan(critical) else critical


def bound_power(sd: float, n: int, margin: float, critical: float | None = None) -> float:
    """Chance that a build equal to the baseline gets a lower bound above −margin: noncentral t at spread `sd`,
    one-sided 2.5 %; `critical` is the bootstrap's own t* quantile when the sweep has one."""
    if n < MIN_PROMPTS_FOR_CI or not margin > 0 or math.isnan(sd):
        return math.nan
    if sd == 0:
        return 1.0
    crit = _critical(n, critical)
    if not math.isfinite(crit):
        return 0.0
    return _nct_sf(crit, n - 1, margin * math.sqrt(n) / sd)


def _nct_sf(x: float, df: int, ncp: float) -> float:
    """P(T > x) for noncentral t: T = (Z + ncp) / √(V/df) > x exactly when Z > x√(V/df) − ncp, so it is the mean
    of Φ(ncp − x√(V/df)) over V ~ χ²(df) (Gauss-Laguerre; scipy's nct is slow and NaN far in the tail)."""
    if df > 300:
        return float(sps.norm.sf(x - ncp))  # √(V/df) ≈ 1
    u, w = _laguerre(df)
    return float(w @ sps.norm.cdf(ncp - x * np.sqrt(2 * u / df)))


@functools.cache
def _laguerre(df: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of E[g(V)], V ~ χ²(df), as Σ w·g(2u): generalized Gauss-Laguerre, α = df/2 − 1."""
    u, w = special.roots_genlaguerre(64, df / 2 - 1)
    return u, w / math.gamma(df / 2)


def power_not_worse(sd: float, n: int, margin: float, critical: float | None = None) -> float:
    """Chance that the verdict calls a build equal to the baseline not worse by `margin`, at spread `sd`: a
    bound above −margin *and* a sample spread at which that bound has `MIN_POWER` (normal differences: the
    sample mean and spread are independent, so it is one integral over the spread's chi distribution)."""
    if n < MIN_PROMPTS_FOR_CI or not margin > 0 or math.isnan(sd):
        return math.nan
    if sd == 0:
        return 1.0
    crit, df = _critical(n, critical), n - 1
    if not math.isfinite(crit):
        return 0.0
    # the gate passes below the sample spread at which the bound's own power is MIN_POWER: ncp(s) = λ
    lam = optimize.brentq(lambda x: _nct_sf(crit, df, x) - MIN_POWER, crit - 10, crit + 10)
    if lam <= 0:
        return 0.0
    v_gate = df * (margin * math.sqrt(n) / lam / sd) ** 2  # v = df · (s / sd)², chi-square with df
    lo, hi = sps.chi2.ppf(1e-12, df), min(v_gate, sps.chi2.isf(1e-12, df))  # where the chi-square has its mass
    if hi <= lo:
        return 0.0
    v = lo + 0.5 * (hi - lo) * (_NODES + 1)
    s = sd * np.sqrt(v / df)
    claimed = sps.chi2.pdf(v, df) * sps.norm.cdf((margin - crit * s / math.sqrt(n)) * math.sqrt(n) / sd)
    return float(0.5 * (hi - lo) * (_WEIGHTS @ claimed))


_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(96)  # the integral over the sample spread


def detectable_margin(sd: float, n: int, critical: float | None = None, power: float = POWER) -> float:
    """The smallest margin a build equal to the baseline is shown not worse by with `power` (the detection
    limit): inf below MIN_PROMPTS_FOR_CI prompts, NaN without a spread to go by."""
    if n < MIN_PROMPTS_FOR_CI:
        return math.inf
    if not sd > 0:
        return math.nan
    if not math.isfinite(_critical(n, critical)):
        return math.inf
    hi = 1.0
    while power_not_worse(1.0, n, hi, critical) < power:  # the margin in units of sd
        hi *= 2
    effect = optimize.brentq(lambda e: power_not_worse(1.0, n, e, critical) - power, 1e-9, hi, xtol=1e-9)
    return float(effect * sd)


def prompts_needed(sd: float, margin: float, power: float = POWER) -> float:
    """Prompts a paired test needs to show a build equal to the baseline not worse by `margin` with `power`, at
    spread `sd` (t critical values): NaN without a spread to go by."""
    if not (sd > 0 and margin > 0):
        return math.nan
    z = sps.norm.ppf(1 - ALPHA_ONE_SIDED) + sps.norm.ppf(power)
    n = max(MIN_PROMPTS_FOR_CI, math.ceil((z * sd / margin) ** 2))  # the normal answer is a lower bound
    while power_not_worse(sd, n, margin) < power:
        n += 1
    return float(n)


def per_prompt_differences(base: Mapping[str, Sequence[float]],
                           build: Mapping[str, Sequence[float]]) -> list[float]:
    """Mean paired difference build − baseline of each prompt both have a valid value for (aligned by repeat)."""
    out = []
    for pid in sorted(set(base) & set(build)):
        a, b = np.asarray(base[pid], np.float64), np.asarray(build[pid], np.float64)
        if a.shape != b.shape:
            raise ValueError(f"prompt {pid!r}: {len(a)} baseline values vs {len(b)} build values")
        diff = b - a
        diff = diff[~np.isnan(diff)]
        if len(diff):
            out.append(float(diff.mean()))
    return out


def summarize_differences(diffs: Sequence[float], outcome_points: float | None = None, n_boot: int = N_BOOT,
                          level: float = LEVEL, seed: int = 0) -> PairedDelta:
    """The mean of per-prompt differences with its 95 % interval and p-value. `outcome_points`: r when a prompt's
    difference can only be a whole win (+r), tie (0) or loss (−r): the score interval, where every value is."""
    return summarize_many(np.asarray(diffs, np.float64)[None], outcome_points, n_boot, level, seed)[0]


def summarize_many(diffs: np.ndarray, outcome_points: float | None = None, n_boot: int = N_BOOT,
                   level: float = LEVEL, seed: int = 0) -> list[PairedDelta]:
    """`summarize_differences` of each row of `diffs` (R samples of n prompts), vectorized for simulations."""
    reps, n = diffs.shape
    sd = diffs.std(axis=1, ddof=1) if n > 1 else np.full(reps, math.nan)
    r = outcome_points
    if r and n and np.isin(diffs, (-r, 0.0, r)).all():
        return [_score(d, float(s), r, level) for d, s in zip(diffs, sd)]
    out = []
    for s, b in zip(sd, studentized_many(diffs, np.ones_like(diffs), n_boot, seed)):
        lo, hi = b.interval(level)
        critical = b.quantiles(level)[1] if len(b.t) else (0.0 if b.se == 0 else math.nan)
        out.append(PairedDelta(b.point, lo, hi, b.p_value(), float(s), n, critical))
    return out


def _score(d: np.ndarray, sd: float, r: float, level: float) -> PairedDelta:
    n, wins, losses = len(d), int((d == r).sum()), int((d == -r).sum())
    if n < MIN_PROMPTS_FOR_CI:
        lo = hi = p = math.nan
    else:
        lo, hi = (r * x for x in score_interval.interval(wins, losses, n, level))
        p = score_interval.p_value(wins, losses, n)
    return PairedDelta(r * (wins - losses) / n, lo, hi, p, sd, n, outcome_points=r, discordant=(wins + losses) / n)


def paired_prompt_delta(base: Mapping[str, Sequence[float]], build: Mapping[str, Sequence[float]],
                        outcome_points: float | None = None, n_boot: int = N_BOOT, level: float = LEVEL,
                        seed: int = 0) -> PairedDelta:
    return summarize_differences(per_prompt_differences(base, build), outcome_points, n_boot, level, seed)


@dataclass(frozen=True)
class Verdict:
    verdict: str  # not_worse | worse | inconclusive
    reason: str
    power: float  # of a not_worse claim for a build equal to the baseline, at the observed spread


def verdict(d: PairedDelta, margin: float) -> Verdict:
    """The three-way verdict of a paired delta against −margin, read off its 95 % interval."""
    power, gate = d.power(margin), d.bound_power(margin)
    if d.n < MIN_PROMPTS_FOR_CI:
        return Verdict("inconclusive", f"{d.n} prompts with a valid value: an interval needs {MIN_PROMPTS_FOR_CI}",
                       power)
    bounds = f"95% interval [{d.lo:+.3g}, {d.hi:+.3g}]"
    if d.hi < -margin:
        return Verdict("worse", f"{bounds} lies below −{margin:g}", power)
    if d.lo > -margin:
        if not gate >= MIN_POWER:
            return Verdict("inconclusive", f"underpowered: {bounds} lies above −{margin:g}, but a build equal to the "
                           f"baseline gets that only {gate:.0%} of the time at this spread over {d.n} prompts (a "
                           f"claim needs {MIN_POWER:.0%}: 20 times the 2.5% error)", power)
        return Verdict("not_worse", f"{bounds} lies above −{margin:g}", power)
    return Verdict("inconclusive", f"{bounds} contains −{margin:g}", power)
