"""The report's quality sections: the judge's scores (with its noise floor and cost), pairwise preference vs
the baseline, ground-truth checks (per build and per item), and the judge's score per prompt category."""

from __future__ import annotations

from typing import Any

import pandas as pd

from runner.analysis.report_data import ReportData
from runner.analysis.report_format import delta, fmt, missing, with_ci
from runner.analysis.report_render import Section
from runner.judges.rubric import CRITERIA
from runner.metrics.stats import MIN_PROMPTS_FOR_CI


def quality(d: ReportData) -> Section:
    if not d.judged:
        why = ("judge.mode=pairwise: see Pairwise vs the baseline." if d.paired else
               "Not judged (judge=none, or every judgment failed). Re-judge the saved generations: "
               "`python -m runner.replay rejudge SWEEP judge=...`.")
        return Section("Quality (judge)", [why])
    cols: dict[str, Any] = {"Judge": "judge_model", "Judged": "judged"}
    for c in CRITERIA:
        cols[c.capitalize()] = lambda r, c=c: with_ci(r, c)
        cols[f"Δ {c}"] = lambda r, c=c: delta(r, c, d.is_base(r))
    cols.update({"Failed judgments": "judge_failed", "Cost $": "judge_cost_usd", "Note": "judge_note"})
    noise = d.findings.judge_noise
    if noise is None:
        floor = ("Judge noise floor: not measured (no answer was judged twice independently; "
                 "set judge.repeats=K to measure it).")
    else:
        floor = (f"Judge noise floor: {noise.groups} answers were judged more than once, by judge repeats or "
                 f"as identical answers from different builds ({noise.judgments} judgments): mean |Δ overall| {fmt(noise.mean_abs_diff)}, "
                 f"max {fmt(noise.max_abs_diff)}. Score differences of that size are the judge's own noise.")
    intro = "Scores 0–10, mean [95% CI] over prompts; Δ vs the baseline cell."
    return Section("Quality (judge)", [intro, _reference_meaning(d), floor, _sweep_cost(d)],
                   d.table(d.ok, cols))


def _reference_meaning(d: ReportData) -> str:
    modes = sorted(set(d.ok["judge_reference"].dropna())) if "judge_reference" in d.ok else []
    text = {
        "none": "judge.reference=none: each answer is scored on its own; Δ is the build's score minus the "
                "baseline's on the same prompts.",
        "prompt": "judge.reference=prompt: answers are scored against the prompt set's reference answers, the "
                  "baseline's too; Δ is the build's score minus the baseline's on the same prompts.",
        "baseline": "judge.reference=baseline: every build is scored against the baseline's answer to the same "
                    "prompt. **The baseline is not graded against itself** (it has no judge score and no Δ): "
                    "compare builds with each other; a score measures agreement with the baseline's answers "
                    "as much as quality.",
    }
    return " ".join(text[m] for m in modes if m in text) or ""


def _sweep_cost(d: ReportData) -> str:
    """Total judge cost of the sweep; unknown (not 0) when any cell's price is missing."""
    costs = d.ok["judge_cost_usd"] if "judge_cost_usd" in d.ok else pd.Series(dtype=float)
    judged = d.ok["judge_model"].notna() if "judge_model" in d.ok else pd.Series(dtype=bool)
    costs = costs[judged]
    if costs.empty or costs.isna().any():
        return "Judge cost of this sweep: unknown (a judge price is missing in conf/judge/*.yaml)."
    return (f"Judge cost of this sweep: ${costs.sum():.4f} (cached judgments count at the cost they had "
            "when first made).")


def pairwise(d: ReportData) -> Section:
    if not d.paired:
        return Section("Pairwise vs the baseline", ["Not run (judge.mode=pairwise compares each build's answers "
                                                    "with the baseline's)."])
    cols: dict[str, Any] = {"Judged": "pairwise_judged", "Win %": lambda r: with_ci(r, "win_rate"),
                            "Tie %": lambda r: with_ci(r, "tie_rate"), "Loss %": lambda r: with_ci(r, "loss_rate"),
                            "Identical %": "identical_rate", "Position inconsistency %": "position_inconsistency",
                            "Net (win − loss)": lambda r: delta(r, "pairwise_net", d.is_base(r)),
                            "Note": "judge_note"}
    text = ["The judge saw the baseline's answer and the build's, in both orders, and said which is better or tie. "
            "A prompt is a win or a loss only when both orders agree; otherwise a tie, and the disagreement is "
            "counted as position inconsistency (a judge preferring a position, not an answer; % of the pairs the "
            "judge saw). Identical answers are ties without a judge call (Identical %). Rates are % of answers, "
            "mean [95% CI] over prompts; Net's interval is the score interval for wins and losses."]
    return Section("Pairwise vs the baseline", text, d.table(d.ok, cols))


def checks(d: ReportData) -> Section:
    if not d.checked:
        return Section("Checks", ["No prompt of this sweep has a ground-truth check (prompts=standard has them)."])
    cols: dict[str, Any] = {"Passed": "checked", "Pass %": lambda r: with_ci(r, "check_pass"),
                            "Δ pass %": lambda r: delta(r, "check_pass", d.is_base(r))}
    text = ["Ground-truth checks (runner/checks.py: exact, regex, number, contains_all, json_schema, python_tests in "
            "a sandbox), no judge involved: the share of checkable answers that pass, mean [95% CI] over prompts; "
            "Δ vs the baseline cell, paired by prompt."]
    return Section("Checks", text, d.table(d.ok, cols))


def checks_per_item(d: ReportData) -> Section:
    """Every checkable prompt × build: ✓, or ✗ with why (the first repeat), so failures can be read."""
    table = d.findings.checks
    if not d.checked or table.empty:
        return Section("Checks per item", ["–"])
    per_item = table[[j for j in table.columns if j in d.label_by_job]].rename(columns=d.label_by_job)
    per_item = per_item.map(lambda v: "–" if not isinstance(v, str) else v if len(v) <= 60 else v[:57] + "…")
    return Section("Checks per item", ["✓ passed, ✗ failed and why (first repeat of each prompt)."],
                   per_item.rename_axis("Item").reset_index())


def per_category(d: ReportData) -> Section:
    metric = "overall" if d.judged else None
    cats = sorted(c[len("overall_"):-len("_n")] for c in d.ok.columns
                  if c.startswith("overall_") and c.endswith("_n"))
    if metric is None or not cats or d.ok.empty:
        return Section("Per category", ["No judge scores per category."])
    def cell(r: pd.Series, cat: str) -> str:
        n = r.get(f"overall_{cat}_n")
        return "–" if missing(n) else f"{with_ci(r, f'overall_{cat}')} (n={int(n)})"
    table = d.table(d.ok, {cat: (lambda r, cat=cat: cell(r, cat)) for cat in cats})
    return Section("Per category", [f"Judge `overall` per prompt category, mean [95% CI] over its prompts; n is the "
                                    f"number of prompts, and no interval is given below {MIN_PROMPTS_FOR_CI}."],
                   table)
