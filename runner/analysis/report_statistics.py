"""The report's Statistics section: how the CIs and Δs were computed, and the smallest difference each
metric could have shown."""

from __future__ import annotations

import numpy as np

from runner.analysis.matrix_stats import ALPHA, FAMILIES, LEVEL, N_BOOT, TARGETS
from runner.analysis.report_data import ReportData
from runner.analysis.report_format import NOT_DISTINCT, fmt
from runner.analysis.report_render import Section
from runner.metrics.stats import MIN_PROMPTS_FOR_CI, POWER, min_prompts_for_significance


def statistics(d: ReportData) -> Section:
    min_n = min_prompts_for_significance(ALPHA)
    return Section("Statistics", [
        f"Means carry {LEVEL:.0%} percentile-bootstrap CIs over **prompts** ({N_BOOT} resamples, seeded): all "
        "repeats and judge repeats of a prompt move together, since answers to one prompt are not independent. "
        f"No interval is given from fewer than {MIN_PROMPTS_FOR_CI} prompts (the n is shown instead).",
        f"Δ = per-prompt paired difference (build − baseline, matched by prompt and repeat), averaged over prompts. "
        f"Significance comes from an exact sign-flip permutation test over prompts, Holm-adjusted within each "
        f"family ({'; '.join(', '.join(m) for m in FAMILIES.values())}); {NOT_DISTINCT} marks a Δ that is not "
        f"significant at {ALPHA:g}. With fewer than {min_n} prompts no Δ can be significant (the test's smallest "
        "p-value is 2/2ⁿ).",
        *_detection_limits(d),
        "The matrix (matrix.csv) holds every CI as `<metric>_lo`/`<metric>_hi` and every Δ as `d_<metric>` with "
        "`_lo`, `_hi`, `_p` (unadjusted), `_sig` (Holm), `_mdd` (minimum detectable difference) and `_n` (prompts)."])


def _detection_limits(d: ReportData) -> list[str]:
    """Per metric, the smallest difference this sweep could have detected (so ≈ is read correctly)."""
    out = []
    for metric in [m for ms in FAMILIES.values() for m in ms]:
        col = f"d_{metric}_mdd"
        if col not in d.ok or d.ok[col].dropna().empty:
            continue
        values = d.ok[col].dropna()
        finite = values[np.isfinite(values)]
        span = (f"{fmt(finite.min())}" + (f" to {fmt(finite.max())}" if finite.max() > finite.min() else "")
                if len(finite) else "none (too few prompts)")
        needed = ""
        if metric in TARGETS and f"d_{metric}_n_needed" in d.ok and d.ok[f"d_{metric}_n_needed"].notna().any():
            n = d.ok[f"d_{metric}_n_needed"].dropna()
            span_n = f"{int(n.min())}" + (f" to {int(n.max())}" if n.max() > n.min() else "")
            needed = f" Detecting a difference of {fmt(TARGETS[metric])} would take about {span_n} prompts."
        out.append(f"Detection limit `{metric}`: the smallest difference this sweep could detect with "
                   f"{POWER:.0%} power is {span}; a smaller true difference may be hidden behind "
                   f"{NOT_DISTINCT}.{needed}")
    return out
