"""The report's Statistics section: how the intervals, Δs and verdicts were computed, what error rates they
carry, and the smallest margin each quality signal could have shown."""

from __future__ import annotations

import numpy as np

from runner.analysis.report_data import ReportData
from runner.analysis.report_format import NOT_DISTINCT, fmt
from runner.analysis.report_recommendation import signals
from runner.analysis.report_render import Section
from runner.analysis.verdict import NAMES
from runner.metrics.paired import MIN_POWER, POWER
from runner.metrics.stats import LEVEL, MIN_PROMPTS_FOR_CI, N_BOOT


def statistics(d: ReportData) -> Section:
    return Section("Statistics", [
        f"Means and Δs carry {LEVEL:.0%} studentized-bootstrap (bootstrap-t) intervals over **prompts** ({N_BOOT} "
        "seeded resamples): all repeats and judge repeats of a prompt move together, since answers to one prompt are "
        f"not independent. No interval from fewer than {MIN_PROMPTS_FOR_CI} prompts (the n is shown instead). Where "
        "a prompt's Δ is a whole win, tie or loss (one check, one pairwise verdict per prompt) the interval is "
        "Tango's score interval, which, unlike a bootstrap, does not mistake 60 tied prompts for certainty.",
        f"Δ = per-prompt paired difference (build − baseline, matched by prompt and repeat), averaged over prompts; "
        f"{NOT_DISTINCT} marks a Δ whose interval includes 0 (per comparison, from the same resamples as the "
        "interval: one statement per Δ).",
        "**Verdicts** read the same interval against a margin: not worse when its lower bound lies above −margin "
        "(a build truly worse by the margin passes at most 2.5 % of the time), worse when its upper bound lies "
        f"below −margin. A not-worse bound the sweep had less than {MIN_POWER:.0%} power to reach for a build "
        "equal to the baseline is reported inconclusive (underpowered: mostly luck). The recommendation keeps a "
        "build only when every signal says not worse and walks the builds from the largest to the smallest, "
        "stopping at the first it cannot keep: the chance that any kept build is truly worse than a margin stays "
        "≤ 2.5 %, with no correction that could make a keep more likely.",
        *_detection_limits(d),
        "The matrix (matrix.csv) holds every interval as `<metric>_lo`/`<metric>_hi`, every Δ as `d_<metric>` with "
        "`_lo`, `_hi`, `_p`, `_sig` (the interval excludes 0), `_mdd` (detection limit) and `_n` (prompts), and "
        "every verdict as `d_<signal>_verdict` with `_reason`, `_margin`, `_power` and `_n_needed`."])


def _detection_limits(d: ReportData) -> list[str]:
    """Per quality signal, the smallest margin this sweep could show a build equal to the baseline not worse by,
    and the prompts its margin would take (so an inconclusive verdict is read correctly)."""
    out = []
    for s in signals(d):
        values = d.ok[f"d_{s}_mdd"].dropna() if f"d_{s}_mdd" in d.ok else []
        finite = values[np.isfinite(values)] if len(values) else values
        span = (f"{fmt(finite.min())}" + (f" to {fmt(finite.max())}" if finite.max() > finite.min() else "")
                if len(finite) else "none (too few prompts)")
        needed = ""
        n = d.ok[f"d_{s}_n_needed"].dropna() if f"d_{s}_n_needed" in d.ok else []
        if len(n):
            span_n = f"{int(n.min())}" + (f" to {int(n.max())}" if n.max() > n.min() else "")
            margin = d.ok[f"d_{s}_margin"].dropna()
            needed = f" Its margin of {fmt(margin.iloc[0])} would take about {span_n} prompts."
        out.append(f"Detection limit, {NAMES[s]}: the smallest margin this sweep could show a build equal to the "
                   f"baseline not worse by, with {POWER:.0%} power, is {span}.{needed}")
    return out
