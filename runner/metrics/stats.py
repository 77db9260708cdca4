"""Bootstrap confidence intervals for means and paired differences (deterministic, seeded)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_BATCH_ELEMS = 1 << 22  # resample indices drawn per batch, bounds memory for long inputs


def bootstrap_ci(values: Sequence[float] | np.ndarray, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean, lo, hi): percentile bootstrap of the mean; NaNs dropped.

    Empty → all NaN; one value → (v, v, v). The percentile bootstrap is optimistic (too narrow) for
    small samples, roughly n < 20.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(x.mean())
    if n == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    batch = max(1, _BATCH_ELEMS // n)
    for s in range(0, n_boot, batch):
        e = min(s + batch, n_boot)
        means[s:e] = x[rng.integers(0, n, size=(e - s, n))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return mean, float(lo), float(hi)


def paired_delta(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, n_boot: int = 2000,
                 level: float = 0.95, seed: int = 0) -> dict[str, float | int | bool]:
    """Mean of b - a over aligned items, with its bootstrap CI.

    Returns delta, lo, hi, n (pairs with neither side NaN) and distinguishable: the CI excludes 0
    (never for fewer than 2 pairs, whose interval has zero width).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal shapes, got {a.shape} and {b.shape}")
    d = (b - a).ravel()
    d = d[~np.isnan(d)]
    delta, lo, hi = bootstrap_ci(d, n_boot=n_boot, level=level, seed=seed)
    return {
        "delta": delta,
        "lo": lo,
        "hi": hi,
        "n": len(d),
        "distinguishable": bool(len(d) >= 2 and (lo > 0.0 or hi < 0.0)),
    }
