"""The recommendation: the smallest ok build that meets the thresholds (KLD, top-1) and is not significantly
worse than the baseline by any quality measure the sweep has, with why each other build is not. The report's
Highlights and the answer on the terminal (headline.py) both show it."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from runner.analysis.matrix_stats import ALPHA
from runner.analysis.report_data import ReportData
from runner.analysis.report_format import delta, flag, fmt, missing
from runner.metrics.stats import min_prompts_for_significance

MAX_KLD = 0.05  # default thresholds; see `runner.analysis.report.write_report`
MIN_TOP1 = 90.0


def recommendation(d: ReportData) -> tuple[list[str], pd.DataFrame | None]:
    """The recommendation and its thresholds as text lines, and per ok build whether it meets them and why
    not (None: no quality data, so no recommendation)."""
    criteria = []
    if d.has_fidelity:
        criteria += [f"KLD ≤ {fmt(d.max_kld)}", f"top-1 ≥ {fmt(d.min_top1)}%"]
    if d.judged and not d.graded_by_baseline:
        criteria.append("judge overall not significantly worse than the baseline (sign-flip test, Holm)")
    if d.checked:
        criteria.append("check pass rate not significantly worse than the baseline")
    if d.paired:
        criteria.append("not significantly less preferred than the baseline by the pairwise judge")
    if not criteria:
        return ["Recommendation: none (no quality data: judge=none and fidelity off)."], None
    why = {i: _why_not(d, r) for i, r in d.ok.iterrows()}
    eligible = d.ok[[not why[i] for i in d.ok.index]]
    rule = f"the smallest build with {', '.join(criteria)}"
    if eligible.empty:
        text = [f"Recommendation: **no build meets the thresholds** ({rule}); keep the baseline."]
    else:
        pick = eligible.sort_values(["size_gb", "gen_tps"], ascending=[True, False]).iloc[0]
        text = [f"Recommendation: **{pick['label']}** ({fmt(pick['size_gb'])} GB), {rule}."]
    if d.judged and d.graded_by_baseline:
        text.append("The judge is not part of the recommendation: with judge.reference=baseline the baseline "
                    "has no score of its own to compare with.")
    text += _power_notes(d)
    text.append(f"Thresholds: max_kld={d.max_kld}, min_top1={d.min_top1} "
                "(`python -m runner.collect SWEEP --max-kld X --min-top1 Y`).")
    table = d.table(d.ok, {"Meets thresholds": lambda r: fmt(not why[r.name]),
                           "Why not": lambda r: "; ".join(why[r.name]) or "–"})
    return text, table


def _why_not(d: ReportData, row: pd.Series) -> list[str]:
    why = []
    if d.has_fidelity:
        if missing(row.get("kld_mean")):
            why.append("no fidelity measured")
        else:
            if row["kld_mean"] > d.max_kld:
                why.append(f"KLD {fmt(row['kld_mean'])} > {fmt(d.max_kld)}")
            if row["top1_pct"] < d.min_top1:
                why.append(f"top-1 {fmt(row['top1_pct'])}% < {fmt(d.min_top1)}%")
    if d.judged and not d.graded_by_baseline:
        if missing(row.get("overall")):
            why.append("not judged")
        elif flag(row.get("d_overall_sig")) and row["d_overall"] < 0:
            why.append(f"judge overall worse than baseline ({delta(row, 'overall', False)})")
    if d.paired and flag(row.get("d_pairwise_net_sig")) and row["d_pairwise_net"] < 0:
        why.append(f"the judge prefers the baseline's answers ({delta(row, 'pairwise_net', False)})")
    if d.checked and flag(row.get("d_check_pass_sig")) and row["d_check_pass"] < 0:
        why.append(f"check pass rate worse than baseline ({delta(row, 'check_pass', False)})")
    return why


def _power_notes(d: ReportData) -> list[str]:
    """Whether the sweep could see a quality difference at all: with too few prompts, "not significantly
    worse" is no evidence, and the recommendation says so instead of leaning on it."""
    notes, min_n = [], min_prompts_for_significance(ALPHA)
    for metric, name, used in (("overall", "judge overall", d.judged and not d.graded_by_baseline),
                               ("check_pass", "check pass rate", d.checked),
                               ("pairwise_net", "pairwise judge", d.paired)):
        n = d.ok[f"d_{metric}_n"].max() if f"d_{metric}_n" in d.ok else math.nan
        if not used or missing(n):
            continue
        if metric == "check_pass" and _baseline_passes_nothing(d):
            notes.append("**The baseline passes no check**: a build cannot do worse, so the checks did not "
                         "rule out any build (a floor, not evidence of equal quality).")
        elif n < min_n:
            notes.append(f"The {name} can tell no build from the baseline here: {int(n)} prompts, and no "
                         f"difference can be significant below {min_n}. It did not rule out any build.")
        else:
            mdd = d.ok[f"d_{metric}_mdd"].dropna()
            mdd = mdd[np.isfinite(mdd)]
            if len(mdd):
                notes.append(f"The {name} rules out a build only for a difference the sweep can detect: "
                             f"{fmt(mdd.min())} to {fmt(mdd.max())} here ({int(n)} prompts); smaller losses "
                             "would pass unseen.")
    return notes


def _baseline_passes_nothing(d: ReportData) -> bool:
    base = d.base_rows()
    return not base.empty and bool((base["check_pass"] == 0).all())
