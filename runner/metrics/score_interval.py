"""Paired outcomes that are wins, ties and losses (a check passed by one side only; a pairwise verdict): Tango's
score interval for the difference of paired proportions (Tango 1998, Stat Med 17:891).

Per prompt the difference build − baseline is +r, 0 or −r (r = 100 points). A bootstrap cannot see a loss
that did not occur: 60 prompts with the same check outcome on both sides give it a zero-width interval, while
a loss rate of 6 % would produce such a sample 2.5 % of the time. The score interval inverts the test
statistic Z(δ) = (b − c − nδ) / √(n(2q̃ + δ(1 − δ))) (b wins, c losses, q̃ the loss probability's maximum
likelihood under δ), like Wilson's interval for one proportion: with no discordant prompt its bound is
−r · z² / (n + z²).
"""

from __future__ import annotations

import math

from scipy import optimize
from scipy import stats as sps


def z_stat(wins: int, losses: int, n: int, delta: float) -> float:
    """Tango's score statistic for a difference δ (in units of r) of paired proportions."""
    var = _score_var(wins, losses, n, delta)
    num = wins - losses - n * delta
    if var <= 0:
        return 0.0 if num == 0 else math.copysign(math.inf, num)
    return num / math.sqrt(var)


def interval(wins: int, losses: int, n: int, level: float) -> tuple[float, float]:
    """(lo, hi) of δ in units of r: where |Z(δ)| ≤ z_{(1+level)/2}."""
    z = sps.norm.ppf((1 + level) / 2)
    point = (wins - losses) / n
    eps = 1e-12
    lo = -1.0 if z_stat(wins, losses, n, -1 + eps) <= z else optimize.brentq(
        lambda d: z_stat(wins, losses, n, d) - z, -1 + eps, point)
    hi = 1.0 if z_stat(wins, losses, n, 1 - eps) >= -z else optimize.brentq(
        lambda d: z_stat(wins, losses, n, d) + z, point, 1 - eps)
    return lo, hi


def p_value(wins: int, losses: int, n: int) -> float:
    """Two-sided p of δ = 0 (McNemar's score test); dual to `interval`."""
    if wins + losses == 0:
        return 1.0
    return float(2 * sps.norm.sf(abs(z_stat(wins, losses, n, 0.0))))


def power(discordant: float, n: int, margin: float, level: float) -> float:
    """Chance that a build equal to the baseline, with this share of discordant prompts, gets a lower bound above
    −margin (in units of r): normal approximation of b − c at the expected counts."""
    z = sps.norm.ppf((1 + level) / 2)
    half = n * discordant / 2
    threshold = z * math.sqrt(_score_var(half, half, n, -margin)) - n * margin  # b − c must exceed it
    spread = math.sqrt(n * discordant)
    if spread == 0:
        return 1.0 if threshold < 0 else 0.0
    return float(sps.norm.sf(threshold / spread))


def _score_var(wins: float, losses: float, n: int, delta: float) -> float:
    """n · (2q̃ + δ(1 − δ)): the variance of b − c under δ, q̃ the restricted MLE of the loss probability."""
    w = -wins - losses + (2 * n - wins + losses) * delta
    q = (math.sqrt(max(w * w + 8 * n * losses * delta * (1 - delta), 0.0)) - w) / (4 * n)
    return n * (2 * q + delta * (1 - delta))
