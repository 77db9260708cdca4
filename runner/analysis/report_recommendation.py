"""The answer to "which build should I ship?": the verdict table and the recommendation it leads to. The report's
first section (Verdict) and the answer on the terminal (headline.py) both show it.

The recommendation is the smallest build, walking the ok builds from the largest to the smallest (a fixed
sequence), that is within the fidelity thresholds (KLD, top-1: thresholds, not tests) and `not_worse` than the
baseline on every quality signal the sweep measured (runner/analysis/verdict.py). Error rates:
* one verdict calls a build truly worse by its margin not worse at most 2.5 % of the time (one tail of a 95 %
  interval);
* a build is kept only when *all* its signals say not worse (intersection-union: no adjustment is needed,
  the rate stays ≤ 2.5 %);
* across builds the walk stops at the first build a signal cannot show not worse (fixed-sequence testing,
  largest first): the chance that any kept build is truly worse than its margin stays ≤ 2.5 %. No correction
  is applied that would make a keep more likely.
A signal that shows no build not worse is dropped from the walk with one sentence saying so (its margin, n,
and the prompts it would take), and the recommendation is then marked provisional; it is never dropped silently.
"""

from __future__ import annotations

import math

import pandas as pd

from runner.analysis.report_data import ReportData
from runner.analysis.report_format import fmt, missing, signed
from runner.analysis.report_render import Section
from runner.analysis.verdict import DEFAULT_MARGINS, NAMES

MAX_KLD = 0.05  # default thresholds; see `runner.analysis.report.write_report`
MIN_TOP1 = 90.0
SHOWN = {"not_worse": "not worse", "worse": "WORSE", "inconclusive": "inconclusive"}


def signals(d: ReportData) -> list[str]:
    """The quality signals with a verdict column (every signal the sweep measured)."""
    return [s for s in DEFAULT_MARGINS if f"d_{s}_verdict" in d.ok and d.ok[f"d_{s}_verdict"].notna().any()]


def _candidates(d: ReportData) -> pd.DataFrame:
    """The ok builds other than the baseline, largest first (the fixed sequence)."""
    rows = d.ok[[not d.is_base(r) for _, r in d.ok.iterrows()]]
    if rows.empty:
        return rows
    return rows.sort_values(["size_gb", "label"], ascending=[False, True], na_position="last")


def _fidelity_problems(d: ReportData, row: pd.Series) -> list[str]:
    if not d.has_fidelity:
        return []
    if missing(row.get("kld_mean")):
        return ["no fidelity measured"]
    out = []
    if row["kld_mean"] > d.max_kld:
        out.append(f"KLD {fmt(row['kld_mean'])} > {fmt(d.max_kld)}")
    if row["top1_pct"] < d.min_top1:
        out.append(f"top-1 {fmt(row['top1_pct'])}% < {fmt(d.min_top1)}%")
    return out


def _margin(rows: pd.DataFrame, s: str) -> float:
    given = rows[f"d_{s}_margin"].dropna() if f"d_{s}_margin" in rows else pd.Series(dtype=float)
    return float(given.iloc[0]) if len(given) else DEFAULT_MARGINS[s]


def _cannot_show(d: ReportData, rows: pd.DataFrame, s: str) -> str:
    """One sentence: why signal `s` shows no build not worse, and what it would take."""
    m = fmt(_margin(rows, s))
    reasons = rows[f"d_{s}_verdict_reason"].dropna()
    n = rows[f"d_{s}_n"].max() if f"d_{s}_n" in rows else math.nan
    needed = rows[f"d_{s}_n_needed"].dropna() if f"d_{s}_n_needed" in rows else pd.Series(dtype=float)
    power = rows[f"d_{s}_power"].dropna() if f"d_{s}_power" in rows else pd.Series(dtype=float)
    if missing(n) or not len(power):
        why = reasons.iloc[0] if len(reasons) else "no paired values"
        return (f"The {NAMES[s]} cannot show any build not worse than the baseline by {m} points here: {why}.")
    take = (f"it would take about {int(needed.min())}" + (f"–{int(needed.max())}" if needed.max() > needed.min() else "")
            + " prompts at the observed spread" if len(needed) else "the spread gives no estimate of what it would take")
    return (f"The {NAMES[s]} cannot show any build not worse than the baseline by {m} points: {int(n)} prompts, "
            f"power at most {power.max():.0%} for a build equal to the baseline; {take}.")


def recommendation(d: ReportData) -> tuple[list[str], pd.DataFrame | None]:
    """The recommendation as text lines, and per ok build whether it is kept and why not (None: no quality data,
    so no recommendation)."""
    sig = signals(d)
    if not sig and not d.has_fidelity:
        return ["Recommendation: none (no quality data: judge=none and fidelity off)."], None
    rows = _candidates(d)
    dropped = [s for s in sig if not (rows[f"d_{s}_verdict"] == "not_worse").any()]
    gating = [s for s in sig if s not in dropped]
    why: dict[int, str] = {}
    kept: list[pd.Series] = []
    stopped = None
    for i, r in rows.iterrows():
        problems = _fidelity_problems(d, r)
        if stopped is not None:
            why[i] = f"after the sequence stopped at {stopped}"
            continue
        if problems:  # a threshold, not a test: the build is left out, the sequence goes on
            why[i] = "; ".join(problems)
            continue
        not_shown = [f"{NAMES[s]} {SHOWN.get(r[f'd_{s}_verdict'], 'no verdict')}" for s in gating
                     if r.get(f"d_{s}_verdict") != "not_worse"]
        if not_shown:
            stopped = r["label"]
            why[i] = "; ".join(not_shown) + " (the sequence stops here)"
            continue
        kept.append(r)
        why[i] = ""
    criteria = [f"not worse than the baseline on {', '.join(NAMES[s] for s in gating)}"] if gating else []
    if d.has_fidelity:
        criteria.append(f"with KLD ≤ {fmt(d.max_kld)} and top-1 ≥ {fmt(d.min_top1)}%")
    rule = (f"the smallest build {' and '.join(criteria)}, walking the builds from the largest to the smallest"
            if criteria else "no criterion can be applied")
    head = "Recommendation (provisional)" if dropped else "Recommendation"
    text = [f"{head}: **{kept[-1]['label']}** ({fmt(kept[-1]['size_gb'])} GB): {rule}." if kept else
            f"{head}: **no build qualifies** ({rule}); keep the baseline."]
    text += [_cannot_show(d, rows, s) + " The recommendation rests on the other signals." for s in dropped]
    if stopped is not None:
        text.append(f"The sequence stopped at {stopped}: smaller builds are not claimed, whatever their own verdicts "
                    "(that keeps the chance of any false 'not worse' at 2.5 %).")
    if len(d.protocols) > 1:
        text.append(f"⚠️ Cross-protocol sweep (fidelity.protocol {', '.join(d.protocols)}): only the {d.protocol} cells "
                    "are ranked; KLDs of different protocols are never compared (see Fidelity).")
    margins = "".join(f", {NAMES[s]} {fmt(_margin(rows, s))}" for s in sig)
    text.append(f"Thresholds: max_kld={d.max_kld}, min_top1={d.min_top1}{margins} "
                "(`python -m runner.collect SWEEP --max-kld X --min-top1 Y`; margins: `verdict.margins.*`).")
    table = d.table(rows, {"Kept": lambda r: "yes" if not why.get(r.name) else "no",
                           "Why not": lambda r: why.get(r.name) or "–"})
    return text, table


def _cell(r: pd.Series, s: str) -> str:
    v = r.get(f"d_{s}_verdict")
    if missing(v):
        return "–"
    lo, hi = r.get(f"d_{s}_lo"), r.get(f"d_{s}_hi")
    ci = f" [{signed(lo)}, {signed(hi)}]" if not (missing(lo) or missing(hi)) else ""
    return f"{SHOWN[v]}{ci}"


def verdict_section(d: ReportData) -> Section:
    """Build × signal: not worse / WORSE / inconclusive with the 95 % interval of build − baseline, then the
    recommendation it leads to."""
    lines, _ = recommendation(d)
    sig = signals(d)
    rows = _candidates(d)
    if rows.empty or not (sig or d.has_fidelity):
        return Section("Verdict", lines)
    cols: dict = {"Size GB": "size_gb"}
    if d.has_fidelity:
        cols.update({"KLD": "kld_mean", "Top-1 %": "top1_pct"})
    for s in sig:
        cols[f"{NAMES[s].capitalize()} (margin {fmt(_margin(rows, s))})"] = lambda r, s=s: _cell(r, s)
    intro = ("Each build against the baseline on every quality signal: **not worse** when the 95 % interval of "
             "build − baseline lies above −margin, **WORSE** when it lies below, else inconclusive (see "
             "matrix.csv `d_<signal>_verdict_reason`, `_power`, `_n_needed`).")
    return Section("Verdict", [*lines, intro], d.table(rows, cols))
