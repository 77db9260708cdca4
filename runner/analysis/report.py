"""A sweep's report, formatted from its matrix and sweep findings: report.md, report.html (plots embedded),
pareto.png. Nothing is computed here that the matrix or runner/findings.py already holds.

Sections: overview, highlights (best by quality, fastest, smallest, a thresholded recommendation),
quality, fidelity, speed, size, per category, fairness (the generation contract and the cross-engine
noise floor), skipped and failed cells, statistics notes, plots.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
import numpy as np
import pandas as pd

from runner.analysis import answer_view
from runner.identity import build_id, parse_build_id, precision_label
from runner.judges.rubric import CRITERIA
from runner.metrics.stats import MIN_PROMPTS_FOR_CI, POWER, min_prompts_for_significance
from runner.analysis.findings import SweepFindings
from runner.analysis.matrix_stats import ALPHA, FAMILIES, LEVEL, N_BOOT, TARGETS

MAX_KLD = 0.05  # default recommendation thresholds; see `write_report`
MIN_TOP1 = 90.0
NOT_DISTINCT = "≈"  # marks a delta whose CI includes 0


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)  # paragraphs; **bold** and `code` are the only markup
    table: pd.DataFrame | None = None
    image: str | None = None  # file name of a plot beside the report


# ------------------------------------------------------------------ formatting


def _nan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt(x: Any) -> str:
    """Compact number: thousands separators for big values, 3 significant digits otherwise; '–' for missing."""
    if _nan(x):
        return "–"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if not isinstance(x, (int, float, np.number)):
        return str(x)
    a = abs(float(x))
    if a >= 1000:
        return f"{x:,.0f}"
    return "0" if a == 0 else f"{x:.3g}"


def flag(x: Any) -> bool | None:
    """A boolean matrix cell (numpy or Python bool, or missing) as bool | None."""
    return None if _nan(x) else bool(x)


def with_ci(row: pd.Series, col: str) -> str:
    """'mean [lo, hi]' from the matrix columns col, col_lo, col_hi."""
    value, lo, hi = row.get(col), row.get(f"{col}_lo"), row.get(f"{col}_hi")
    if _nan(value) or _nan(lo) or _nan(hi):
        return fmt(value)
    return f"{fmt(value)} [{fmt(lo)}, {fmt(hi)}]"


def delta(row: pd.Series, metric: str, is_base: bool) -> str:
    """'Δ [lo, hi]', suffixed with ≈ when it is not significant (Holm-adjusted sign-flip test)."""
    if is_base:
        return "baseline"
    d = row.get(f"d_{metric}")
    if _nan(d):
        return "–"
    mark = f" {NOT_DISTINCT}" if flag(row.get(f"d_{metric}_sig")) is False else ""
    return f"{signed(d)} [{signed(row.get(f'd_{metric}_lo'))}, {signed(row.get(f'd_{metric}_hi'))}]{mark}"


def signed(x: float) -> str:
    return ("-" if x < 0 else "+") + fmt(abs(x))


# ------------------------------------------------------------------ the tables


def labels(df: pd.DataFrame) -> pd.Series:
    """'format precision', plus whichever identity fields vary in the sweep, plus '#job' if still ambiguous."""
    artifacts = df["artifact"] if "artifact" in df else pd.Series([None] * len(df), index=df.index)
    base = pd.Series([f"{f} {precision_label(str(p), a if isinstance(a, str) else None)}"
                      for f, p, a in zip(df["format"], df["precision"], artifacts)], index=df.index)
    for col in ("model", "generation", "prompts", "judge"):
        if col in df and df[col].nunique(dropna=True) > 1:
            base = base + " " + df[col].astype(str)
    ran = df["status"] != "skipped"  # a skipped cell never takes the plain label from one that ran
    dup = base.where(ran).duplicated(keep=False) & ran | ~ran & base.isin(base[ran])
    dup |= ~ran & base.where(~ran).duplicated(keep=False)
    return base.where(~dup, base + " #" + df["job"].astype("Int64").astype(str))


def labels_by_job(df: pd.DataFrame) -> dict[int | None, str]:
    """Each cell's label (see `labels`) by its job number."""
    return {None if _nan(j) else int(j): lab for j, lab in zip(df["job"], labels(df))}


class Report:
    """Builds the sections from the matrix (`df`, one row per cell) and the sweep's findings."""

    def __init__(self, df: pd.DataFrame, findings: SweepFindings | None, baseline: str | None,
                 max_kld: float = MAX_KLD, min_top1: float = MIN_TOP1):
        self.df = df.assign(label=labels(df)).reset_index(drop=True)
        self.baseline = baseline
        self.max_kld, self.min_top1 = max_kld, min_top1
        self.ok = self.df[self.df["status"] == "ok"]
        self.judged = "overall" in self.ok and self.ok["overall"].notna().any()
        self.checked = "check_pass" in self.ok and self.ok["check_pass"].notna().any()
        self.paired = "win_rate" in self.ok and self.ok["win_rate"].notna().any()
        self.graded_by_baseline = "judge_reference" in self.ok and (self.ok["judge_reference"] == "baseline").any()
        self.has_fidelity = "kld_mean" in self.ok and self.ok["kld_mean"].notna().any()
        self.label_by_job = labels_by_job(df)
        self.findings = findings or SweepFindings(contracts=pd.DataFrame())

    def is_base(self, row: pd.Series) -> bool:
        return self.baseline == build_id(row["format"], row["precision"])

    def sections(self) -> list[Section]:
        return [self.overview(), self.highlights(), self.quality(), self.pairwise(), self.checks(), self.checks_per_item(),
                self.fidelity(), self.speed(), self.size(),
                self.per_category(), self.fairness(), self.not_ok("skipped"), self.not_ok("failed"),
                self.statistics(), Section("Plots", [self._plot_caption()], image="pareto.png")]

    def _table(self, rows: pd.DataFrame, columns: dict[str, Any]) -> pd.DataFrame:
        """Columns of display strings; each value is a matrix column name or a function of the row."""
        out = {name: [fmt(r.get(src)) if isinstance(src, str) else src(r) for _, r in rows.iterrows()]
               for name, src in columns.items()}
        return pd.DataFrame({"Build": list(rows["label"]), **out})

    def overview(self) -> Section:
        counts = self.df["status"].value_counts()
        statuses = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("ok", "skipped", "failed"))
        models = ", ".join(sorted(self.df["model"].dropna().unique()))
        text = [f"{len(self.df)} cell{'s' * (len(self.df) != 1)}: {statuses}. Baseline: `{self.baseline or 'none'}`. "
                f"Models: {models}.", *self.requantized()]
        cols: dict[str, Any] = {"Status": "status", "Size GB": "size_gb", "Bits/weight": "bits_per_weight"}
        if self.judged:
            cols["Judge overall"] = lambda r: with_ci(r, "overall")
        cols.update({"KLD": "kld_mean", "Top-1 %": "top1_pct", "Gen tok/s": lambda r: with_ci(r, "gen_tps"),
                     "s/prompt": "s_per_prompt"})
        return Section("Overview", text, self._table(self.df, cols))

    def requantized(self) -> list[str]:
        """A model given as an already-quantized GGUF: every build is requantized from it."""
        if "requantized_from" not in self.ok:
            return []
        return [f"⚠️ **REQUANTIZED SOURCE ({model})**: the model was given as a {kind} GGUF and every build was made "
                "from it, not from the original weights. Fidelity is measured against this source, not against the "
                "true FP16, so every quantization error shown here understates the error vs the original model."
                for model, kind in self.ok.dropna(subset=["requantized_from"]).groupby("model")["requantized_from"]
                .first().items()]

    # -------------------------------------------------------------- highlights and recommendation

    def _pick(self, col: str, largest: bool, rows: pd.DataFrame | None = None) -> str:
        rows = self.ok if rows is None else rows
        rows = rows[rows[col].notna()] if col in rows else rows.iloc[0:0]
        if rows.empty:
            return "–"
        best = rows.loc[rows[col].idxmax() if largest else rows[col].idxmin()]
        vs_base = "" if _nan(best.get(f"d_{col}")) else f"; Δ vs baseline {delta(best, col, False)}"
        return f"**{best['label']}** ({col} = {fmt(best[col])}{vs_base})"

    def _why_not(self, row: pd.Series) -> list[str]:
        why = []
        if self.has_fidelity:
            if _nan(row.get("kld_mean")):
                why.append("no fidelity measured")
            else:
                if row["kld_mean"] > self.max_kld:
                    why.append(f"KLD {fmt(row['kld_mean'])} > {fmt(self.max_kld)}")
                if row["top1_pct"] < self.min_top1:
                    why.append(f"top-1 {fmt(row['top1_pct'])}% < {fmt(self.min_top1)}%")
        if self.judged and not self.graded_by_baseline:
            if _nan(row.get("overall")):
                why.append("not judged")
            elif flag(row.get("d_overall_sig")) and row["d_overall"] < 0:
                why.append(f"judge overall worse than baseline ({delta(row, 'overall', False)})")
        if self.paired and flag(row.get("d_pairwise_net_sig")) and row["d_pairwise_net"] < 0:
            why.append(f"the judge prefers the baseline's answers ({delta(row, 'pairwise_net', False)})")
        if self.checked and flag(row.get("d_check_pass_sig")) and row["d_check_pass"] < 0:
            why.append(f"check pass rate worse than baseline ({delta(row, 'check_pass', False)})")
        return why

    def highlights(self) -> Section:
        if self.judged:
            quality = self._pick("overall", largest=True)
        elif self.has_fidelity:  # the baseline has KLD 0 by definition
            refs = [build_id(f, p) != ref for f, p, ref in zip(self.ok["format"], self.ok["precision"],
                                                                self.ok["fidelity_baseline"])]
            quality = self._pick("kld_mean", largest=False, rows=self.ok[refs])
            quality += " (lowest KLD, the baseline excluded)" if quality != "–" else ""
        else:
            quality = "– (no judge and no fidelity)"
        text = [f"Best by quality: {quality}", f"Fastest: {self._pick('gen_tps', largest=True)}",
                f"Smallest: {self._pick('size_gb', largest=False)}"]
        lines, why = self.recommendation()
        text += lines
        if why is None:
            return Section("Highlights", text)
        table = self._table(self.ok, {"Meets thresholds": lambda r: fmt(not why[r.name]),
                                      "Why not": lambda r: "; ".join(why[r.name]) or "–"})
        return Section("Highlights", text, table)

    def recommendation(self) -> tuple[list[str], dict[Any, list[str]] | None]:
        """The recommendation and its thresholds as text lines, and why each ok build is not eligible (None:
        no quality data, so no recommendation). The terminal summary prints the same lines."""
        criteria = []
        if self.has_fidelity:
            criteria += [f"KLD ≤ {fmt(self.max_kld)}", f"top-1 ≥ {fmt(self.min_top1)}%"]
        if self.judged and not self.graded_by_baseline:
            criteria.append("judge overall not significantly worse than the baseline (sign-flip test, Holm)")
        if self.checked:
            criteria.append("check pass rate not significantly worse than the baseline")
        if self.paired:
            criteria.append("not significantly less preferred than the baseline by the pairwise judge")
        if not criteria:
            return ["Recommendation: none (no quality data: judge=none and fidelity off)."], None
        why = {i: self._why_not(r) for i, r in self.ok.iterrows()}
        eligible = self.ok[[not why[i] for i in self.ok.index]]
        rule = f"the smallest build with {', '.join(criteria)}"
        if eligible.empty:
            text = [f"Recommendation: **no build meets the thresholds** ({rule}); keep the baseline."]
        else:
            pick = eligible.sort_values(["size_gb", "gen_tps"], ascending=[True, False]).iloc[0]
            text = [f"Recommendation: **{pick['label']}** ({fmt(pick['size_gb'])} GB), {rule}."]
        if self.judged and self.graded_by_baseline:
            text.append("The judge is not part of the recommendation: with judge.reference=baseline the baseline "
                        "has no score of its own to compare with.")
        text += self._power_notes()
        text.append(f"Thresholds: max_kld={self.max_kld}, min_top1={self.min_top1} "
                    "(`python -m runner.collect SWEEP --max-kld X --min-top1 Y`).")
        return text, why

    # -------------------------------------------------------------- metric tables

    def quality(self) -> Section:
        if not self.judged:
            why = ("judge.mode=pairwise: see Pairwise vs the baseline." if self.paired else
                   "Not judged (judge=none, or every judgment failed). Re-judge the saved generations: "
                   "`python -m runner.replay rejudge SWEEP judge=...`.")
            return Section("Quality (judge)", [why])
        cols: dict[str, Any] = {"Judge": "judge_model", "Judged": "judged"}
        for c in CRITERIA:
            cols[c.capitalize()] = lambda r, c=c: with_ci(r, c)
            cols[f"Δ {c}"] = lambda r, c=c: delta(r, c, self.is_base(r))
        cols.update({"Failed judgments": "judge_failed", "Cost $": "judge_cost_usd", "Note": "judge_note"})
        noise = self.findings.judge_noise
        if noise is None:
            floor = ("Judge noise floor: not measured (no answer was judged twice independently; "
                     "set judge.repeats=K to measure it).")
        else:
            floor = (f"Judge noise floor: {noise.groups} answers were judged more than once, by judge repeats or "
                     f"as identical answers from different builds ({noise.judgments} judgments): mean |Δ overall| {fmt(noise.mean_abs_diff)}, "
                     f"max {fmt(noise.max_abs_diff)}. Score differences of that size are the judge's own noise.")
        intro = "Scores 0–10, mean [95% CI] over prompts; Δ vs the baseline cell."
        return Section("Quality (judge)", [intro, self._reference_meaning(), floor, self._sweep_cost()],
                       self._table(self.ok, cols))

    def _power_notes(self) -> list[str]:
        """Whether the sweep could see a quality difference at all: with too few prompts, "not significantly
        worse" is no evidence, and the recommendation says so instead of leaning on it."""
        notes, min_n = [], min_prompts_for_significance(ALPHA)
        for metric, name, used in (("overall", "judge overall", self.judged and not self.graded_by_baseline),
                                   ("check_pass", "check pass rate", self.checked),
                                   ("pairwise_net", "pairwise judge", self.paired)):
            n = self.ok[f"d_{metric}_n"].max() if f"d_{metric}_n" in self.ok else math.nan
            if not used or _nan(n):
                continue
            if metric == "check_pass" and self._baseline_passes_nothing():
                notes.append("**The baseline passes no check**: a build cannot do worse, so the checks did not "
                             "rule out any build (a floor, not evidence of equal quality).")
            elif n < min_n:
                notes.append(f"The {name} can tell no build from the baseline here: {int(n)} prompts, and no "
                             f"difference can be significant below {min_n}. It did not rule out any build.")
            else:
                mdd = self.ok[f"d_{metric}_mdd"].dropna()
                mdd = mdd[np.isfinite(mdd)]
                if len(mdd):
                    notes.append(f"The {name} rules out a build only for a difference the sweep can detect: "
                                 f"{fmt(mdd.min())} to {fmt(mdd.max())} here ({int(n)} prompts); smaller losses "
                                 "would pass unseen.")
        return notes

    def _baseline_passes_nothing(self) -> bool:
        base = self.ok[[self.is_base(r) for _, r in self.ok.iterrows()]]
        return not base.empty and bool((base["check_pass"] == 0).all())

    def _reference_meaning(self) -> str:
        modes = sorted(set(self.ok["judge_reference"].dropna())) if "judge_reference" in self.ok else []
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

    def _sweep_cost(self) -> str:
        """Total judge cost of the sweep; unknown (not 0) when any cell's price is missing."""
        costs = self.ok["judge_cost_usd"] if "judge_cost_usd" in self.ok else pd.Series(dtype=float)
        judged = self.ok["judge_model"].notna() if "judge_model" in self.ok else pd.Series(dtype=bool)
        costs = costs[judged]
        if costs.empty or costs.isna().any():
            return "Judge cost of this sweep: unknown (a judge price is missing in conf/judge/*.yaml)."
        return (f"Judge cost of this sweep: ${costs.sum():.4f} (cached judgments count at the cost they had "
                "when first made).")

    def pairwise(self) -> Section:
        if not self.paired:
            return Section("Pairwise vs the baseline", ["Not run (judge.mode=pairwise compares each build's answers "
                                                        "with the baseline's)."])
        cols: dict[str, Any] = {"Judged": "pairwise_judged", "Win %": lambda r: with_ci(r, "win_rate"),
                                "Tie %": lambda r: with_ci(r, "tie_rate"), "Loss %": lambda r: with_ci(r, "loss_rate"),
                                "Position inconsistency %": "position_inconsistency",
                                "Net (win − loss)": lambda r: delta(r, "pairwise_net", self.is_base(r)),
                                "Note": "judge_note"}
        text = ["The judge saw the baseline's answer and the build's, in both orders, and said which is better or tie. "
                "A prompt is a win or a loss only when both orders agree; otherwise a tie, and the disagreement is "
                "counted as position inconsistency (a judge preferring a position, not an answer). Rates are % of "
                "answers, mean [95% CI] over prompts; Net is tested with the sign-flip test (Holm across builds)."]
        return Section("Pairwise vs the baseline", text, self._table(self.ok, cols))

    def checks(self) -> Section:
        if not self.checked:
            return Section("Checks", ["No prompt of this sweep has a ground-truth check (prompts=standard has them)."])
        cols: dict[str, Any] = {"Passed": "checked", "Pass %": lambda r: with_ci(r, "check_pass"),
                                "Δ pass %": lambda r: delta(r, "check_pass", self.is_base(r))}
        text = ["Ground-truth checks (runner/checks.py: exact, regex, number, contains_all, json_schema, python_tests in "
                "a sandbox), no judge involved: the share of checkable answers that pass, mean [95% CI] over prompts; "
                "Δ vs the baseline cell, paired by prompt."]
        return Section("Checks", text, self._table(self.ok, cols))

    def checks_per_item(self) -> Section:
        """Every checkable prompt × build: ✓, or ✗ with why (the first repeat), so failures can be read."""
        table = self.findings.checks
        if not self.checked or table.empty:
            return Section("Checks per item", ["–"])
        per_item = table[[j for j in table.columns if j in self.label_by_job]].rename(columns=self.label_by_job)
        per_item = per_item.map(lambda v: "–" if not isinstance(v, str) else v if len(v) <= 60 else v[:57] + "…")
        return Section("Checks per item", ["✓ passed, ✗ failed and why (first repeat of each prompt)."],
                       per_item.rename_axis("Item").reset_index())

    def fidelity(self) -> Section:
        if not self.has_fidelity and self.ok.get("answer_similarity", pd.Series(dtype=float)).isna().all():
            return Section("Fidelity", ["No fidelity metrics (fidelity.enabled=false)."])
        cols = {"Baseline": "fidelity_baseline", "KLD mean": lambda r: with_ci(r, "kld_mean"), "KLD p99": "kld_p99",
                "Top-1 %": "top1_pct", "PPL": "ppl", "ΔPPL": "dppl",
                "Answer agreement": lambda r: with_ci(r, "answer_agreement"),
                "Answer similarity": lambda r: with_ci(r, "answer_similarity")}
        cols["KLD top-k"] = "kld_top_k"
        return Section("Fidelity", [
            "KLD(baseline ‖ build) per token on identical token ids (CI: mean ± 1.96 SE from per-chunk means, "
            f"shown from {MIN_PROMPTS_FOR_CI} chunks); top-1: same argmax token; answer agreement: exact-match share "
            "of answers vs the baseline's; similarity: token-sequence similarity. The baseline cell's own KLD is 0 "
            "by construction.",
            "With `fidelity.top_k=K` the baseline keeps its top-K log-probs plus one tail bucket per position, so "
            "the KLD shown is a **lower bound** of the full-vocabulary KLD (exact with `fidelity.top_k=all`)."],
            self._table(self.ok, cols))

    def speed(self) -> Section:
        cols = {"Gen tok/s": lambda r: with_ci(r, "gen_tps"),
                "Δ gen tok/s": lambda r: delta(r, "gen_tps", self.is_base(r)),
                "Prompt tok/s": lambda r: with_ci(r, "prompt_tps"), "TTFT s": lambda r: with_ci(r, "ttft_s"),
                "s/prompt": lambda r: with_ci(r, "s_per_prompt"),
                "Δ s/prompt": lambda r: delta(r, "s_per_prompt", self.is_base(r)),
                "Mean tokens": "mean_tokens", "Truncated %": "truncated_pct", "Peak RSS MB": "peak_rss_mb",
                "Cached answers": "generations_cached", "Stale answers": "speed_stale_answers", "Device": "device",
                "Host": "host", "Node": "node"}
        text = ["Token-weighted throughput (CI: bootstrap over prompts of the ratio); Δ gen tok/s is the mean "
                "per-prompt difference. A cached answer keeps the speed measured when it was generated only if that "
                "was on this host and device; answers measured elsewhere are **stale**: left out of every speed "
                "figure and counted under Stale answers."]
        stale = self.ok[self.ok.get("speed_stale_answers", pd.Series(0, index=self.ok.index)).fillna(0) > 0]
        if len(stale):
            text.append(f"⚠️ **STALE SPEED**: {', '.join(stale['label'])} reuse answers measured on another host or "
                        "device; their speed figures cover only the answers measured here (none: –). Re-measure with "
                        "`python -m runner.replay reproduce SWEEP`.")
        by_host = self.ok.sort_values(["host", "label"], na_position="last") if "host" in self.ok else self.ok
        return Section("Speed", text, self._table(by_host, cols))

    def size(self) -> Section:
        base = self.ok[[self.is_base(r) for _, r in self.ok.iterrows()]]
        base_gb = base["size_gb"].iloc[0] if len(base) else math.nan
        cols = {"Size GB": "size_gb", "× baseline": lambda r: fmt(r["size_gb"] / base_gb),
                "Bits/weight": "bits_per_weight", "Build s": "build_s", "Artifact cached": "artifact_cache_hit"}
        notes = [f"**{r['label']}**: {r['quant_notes']}" for _, r in self.ok.iterrows()
                 if isinstance(r.get("quant_notes"), str)]
        text = ["Quantization notes (from the converters; e.g. llama.cpp falls back to other types for tensors whose "
                "rows do not fit a K-quant's 256-value blocks):", *notes] if notes else []
        return Section("Size", text, self._table(self.ok, cols))

    def per_category(self) -> Section:
        metric = "overall" if self.judged else None
        cats = sorted(c[len("overall_"):-len("_n")] for c in self.ok.columns
                      if c.startswith("overall_") and c.endswith("_n"))
        if metric is None or not cats or self.ok.empty:
            return Section("Per category", ["No judge scores per category."])
        def cell(r: pd.Series, cat: str) -> str:
            n = r.get(f"overall_{cat}_n")
            return "–" if _nan(n) else f"{with_ci(r, f'overall_{cat}')} (n={int(n)})"
        table = self._table(self.ok, {cat: (lambda r, cat=cat: cell(r, cat)) for cat in cats})
        return Section("Per category", [f"Judge `overall` per prompt category, mean [95% CI] over its prompts; n is the "
                                        f"number of prompts, and no interval is given below {MIN_PROMPTS_FOR_CI}."],
                       table)

    # -------------------------------------------------------------- fairness

    def fairness(self) -> Section:
        contracts = self.findings.contracts
        contracts = contracts[[j in self.label_by_job for j in contracts.index]] if not contracts.empty else contracts
        if contracts.empty:
            return Section("Fairness", ["No ok cell records a generation contract."] + self._engine_noise())
        text = []
        for model, group in contracts.groupby("model"):
            if problems := self.findings.contract_problems.get(str(model)):
                text.append(f"⚠️ **CONTRACT MISMATCH ({model})**: {'; '.join(problems)}. "
                            "Comparisons between these cells are not fair.")
            else:
                text.append(f"✅ All {len(group)} ok cells of `{model}` share one generation contract "
                            "and identical rendered prompt token ids.")
        text += self._devices() + self._hardware() + self._speed_comparability()
        if len(contracts.drop_duplicates()) == 1:  # one contract: show it once
            table = pd.DataFrame({"Field": contracts.columns, "Value": contracts.iloc[0].values})
        else:
            table = contracts.rename(index=self.label_by_job).rename_axis("Build").reset_index()
        return Section("Fairness", text + self._engine_noise(), table)

    def _devices(self) -> list[str]:
        """Every cell of one model must run on the same kind of device, or its comparison says so loudly."""
        out = []
        for model, group in self.ok.groupby("model"):
            devices = {d for d in group.get("device", pd.Series(dtype=object)).dropna()}
            per_cell = ", ".join(f"{r['label']}: {r.get('device') or 'unknown'} ({r.get('compute_dtype') or '?'})"
                                 for _, r in group.iterrows())
            if len(devices) > 1:
                out.append(f"⚠️ **DEVICE MISMATCH ({model})**: cells ran on {', '.join(sorted(devices))} — speed and "
                           f"even outputs are not comparable across them. Per cell: {per_cell}.")
            else:
                out.append(f"Devices ({model}): {per_cell}.")
        return out

    def _hardware(self) -> list[str]:
        """Speed compares only within one kind of hardware (host fingerprint: CPU, cores, GPU)."""
        out = []
        if "host_fingerprint" not in self.ok:
            return out
        for model, group in self.ok.groupby("model"):
            hosts = group.dropna(subset=["host_fingerprint"]).groupby("host_fingerprint")
            if len(hosts) > 1:
                where = "; ".join(f"{g['host'].iloc[0]}: {', '.join(g['label'])}" for _, g in hosts)
                out.append(f"⚠️ **HARDWARE MISMATCH ({model})**: its cells ran on {len(hosts)} kinds of hardware ({where}). "
                           "Speed is compared only between cells on the same hardware; speed deltas across them "
                           "are left empty.")
        return out

    def _speed_comparability(self) -> list[str]:
        """Speed measured while other cells ran on the same host is not comparable."""
        overlapping = [self.label_by_job[j] for j in self.findings.parallel_jobs if j in self.label_by_job]
        flagged = sorted(set(overlapping) | {
            lab for lab, jobs in zip(self.ok["label"], self.ok.get("speed_parallel_jobs", pd.Series(dtype=float)))
            if not _nan(jobs) and jobs > 1})
        if not flagged:
            return ["Speed: every cell was measured alone on its host (no other cell ran at the same time)."]
        return [f"⚠️ **SPEED NOT COMPARABLE**: {', '.join(flagged)} were measured while other cells ran on the same "
                "host (a parallel launcher): they competed for the CPU/GPU. Re-run with the basic launcher (or "
                "`hydra.launcher.n_jobs=1`) to compare speed."]

    def _engine_noise(self) -> list[str]:
        """KLD of the baseline precision's cell in the other format vs the baseline: the engine noise floor."""
        out = []
        for _, r in self.ok.iterrows():
            base = r.get("fidelity_baseline")
            if _nan(base) or _nan(r.get("kld_mean")) or "_" not in str(base):
                continue
            base_format, base_precision = parse_build_id(str(base))
            if r["precision"] == base_precision and r["format"] != base_format:
                out.append(f"Cross-engine noise floor: **{r['label']}** vs `{base}` (same weights, other engine): "
                           f"KLD {with_ci(r, 'kld_mean')}, top-1 {fmt(r.get('top1_pct'))}%, answer agreement "
                           f"{fmt(r.get('answer_agreement'))}. Differences of this size are engine noise, "
                           "not quantization.")
        return out or ["Cross-engine noise floor: not measured (no FP16 cell of a second format in this sweep)."]

    def not_ok(self, status: str) -> Section:
        rows = self.df[self.df["status"] == status]
        title = f"{status.capitalize()} cells"
        if rows.empty:
            return Section(title, ["None."])
        return Section(title, [], self._table(rows, {"Job": "job", "Reason": "reason"}))

    def statistics(self) -> Section:
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
            *self._detection_limits(),
            "The matrix (matrix.csv) holds every CI as `<metric>_lo`/`<metric>_hi` and every Δ as `d_<metric>` with "
            "`_lo`, `_hi`, `_p` (unadjusted), `_sig` (Holm), `_mdd` (minimum detectable difference) and `_n` (prompts)."])

    def _detection_limits(self) -> list[str]:
        """Per metric, the smallest difference this sweep could have detected (so ≈ is read correctly)."""
        out = []
        for metric in [m for ms in FAMILIES.values() for m in ms]:
            col = f"d_{metric}_mdd"
            if col not in self.ok or self.ok[col].dropna().empty:
                continue
            values = self.ok[col].dropna()
            finite = values[np.isfinite(values)]
            span = (f"{fmt(finite.min())}" + (f" to {fmt(finite.max())}" if finite.max() > finite.min() else "")
                    if len(finite) else "none (too few prompts)")
            needed = ""
            if metric in TARGETS and f"d_{metric}_n_needed" in self.ok and self.ok[f"d_{metric}_n_needed"].notna().any():
                n = self.ok[f"d_{metric}_n_needed"].dropna()
                span_n = f"{int(n.min())}" + (f" to {int(n.max())}" if n.max() > n.min() else "")
                needed = f" Detecting a difference of {fmt(TARGETS[metric])} would take about {span_n} prompts."
            out.append(f"Detection limit `{metric}`: the smallest difference this sweep could detect with "
                       f"{POWER:.0%} power is {span}; a smaller true difference may be hidden behind "
                       f"{NOT_DISTINCT}.{needed}")
        return out

    def _plot_caption(self) -> str:
        y = "judge overall" if self.judged else "KLD vs the baseline (lower is better)"
        return f"{y} against size and generation speed; the dashed line joins the Pareto-optimal builds."


# ------------------------------------------------------------------ plot


def pareto_front(x: np.ndarray, y: np.ndarray, x_low_better: bool, y_high_better: bool) -> list[int]:
    """Indices of the points no other point beats on both axes, ordered along x."""
    order = sorted(range(len(x)), key=lambda i: (x[i] if x_low_better else -x[i], -y[i] if y_high_better else y[i]))
    front, best = [], -math.inf
    for i in order:
        score = y[i] if y_high_better else -y[i]
        if score > best:
            front.append(i)
            best = score
    return front


def pareto_png(ok: pd.DataFrame, judged: bool) -> bytes | None:
    """Quality (judge overall, else KLD) vs size and vs gen tok/s, one labelled point per build."""
    from matplotlib.figure import Figure  # Agg canvas, no pyplot state

    if judged:
        ycol, ylabel, ytitle = "overall", "judge overall (higher is better)", "judge overall"
    else:
        ycol, ylabel, ytitle = "kld_mean", "KLD vs the baseline (lower is better)", "KLD"
    data = ok[ok[ycol].notna()] if ycol in ok else ok.iloc[0:0]
    if data.empty:
        return None
    fig = Figure(figsize=(12, 5), dpi=110, layout="constrained")
    for ax, xcol, xlabel, x_low in zip(fig.subplots(1, 2), ("size_gb", "gen_tps"),
                                       ("size on disk (GB)", "generation speed (tok/s)"), (True, False)):
        ax.set(xlabel=xlabel, ylabel=ylabel, title=f"{ytitle} vs {xlabel.split(' (')[0]}")
        d = data[data[xcol].notna()]
        x, y = d[xcol].to_numpy(float), d[ycol].to_numpy(float)
        yerr = None
        if judged and {"overall_lo", "overall_hi"} <= set(d.columns):
            yerr = np.abs(np.vstack([y - d["overall_lo"].to_numpy(float), d["overall_hi"].to_numpy(float) - y]))
        ax.errorbar(x, y, yerr=yerr, fmt="o", capsize=3)
        for k, (xi, yi, lab) in enumerate(zip(x, y, d["label"])):  # staggered so coincident points stay readable
            ax.annotate(lab, (xi, yi), textcoords="offset points", xytext=(5, (5, -12, 17)[k % 3]), fontsize=9)
        front = pareto_front(x, y, x_low, judged)
        if len(front) > 1:
            ax.plot(x[front], y[front], "--", color="gray", linewidth=1)
        ax.locator_params(axis="x", nbins=6)
        ax.margins(x=0.15, y=0.1)
        ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ------------------------------------------------------------------ rendering


def render_markdown(sections: list[Section], title: str) -> str:
    out = [f"# {title}", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for p in s.text:
            out += [p, ""]
        if s.table is not None:
            out += [s.table.to_markdown(index=False), ""]
        if s.image:
            out += [f"![{s.title}]({s.image})", ""]
    return "\n".join(out)


def _inline(text: str) -> markupsafe.Markup:
    """Escape, then turn **bold** and `code` into tags."""
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return markupsafe.Markup(re.sub(r"`(.+?)`", r"<code>\1</code>", text))


HTML = jinja2.Environment(autoescape=True).from_string("""<!doctype html>
<html><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; }
{{ style }}
</style></head><body>
<h1>{{ title }}</h1>
{% if answers %}<p><a href="#answers">Answers, side by side</a></p>{% endif %}
{% for s in sections %}<h2>{{ s.title }}</h2>
{% for p in s.text %}<p>{{ inline(p) }}</p>
{% endfor %}{% if s.table is not none %}{{ s.table.to_html(index=False, border=0, classes="sortable") | safe }}
{% endif %}{% if s.image and png %}<img alt="{{ s.title }}" src="data:image/png;base64,{{ png }}">
{% endif %}{% endfor %}{{ answers }}
<script>{{ script }}</script>
</body></html>
""")


def render_html(sections: list[Section], title: str, png: bytes | None = None,
                answers: markupsafe.Markup = markupsafe.Markup("")) -> str:
    """One self-contained page (inline CSS and JS, the plot embedded, every table sortable), everything
    escaped; `answers`: the answer view (runner/answer_view.py), already escaped."""
    return HTML.render(title=title, sections=sections, inline=_inline, png=base64.b64encode(png).decode() if png else None,
                       answers=answers, style=markupsafe.Markup(answer_view.STYLE),
                       script=markupsafe.Markup(answer_view.SCRIPT))


def write_report(df: pd.DataFrame, findings: SweepFindings, out_dir: Path, *, baseline: str | None = None,
                 max_kld: float = MAX_KLD, min_top1: float = MIN_TOP1, samples: pd.DataFrame | None = None) -> None:
    """Write report.md, report.html and pareto.png into `out_dir`; report.html ends with the answer view
    of `samples` (runner/samples.py).

    The recommendation is the smallest ok build with KLD ≤ `max_kld` (default 0.05 nats/token), top-1
    agreement ≥ `min_top1` % (default 90) and, when judged, a judge overall not distinguishably worse
    than the `baseline` cell (FORMAT_PRECISION, e.g. gguf_fp16). Criteria without data are skipped.
    """
    out_dir = Path(out_dir)
    report = Report(df, findings, baseline, max_kld, min_top1)
    sections = report.sections()
    png = pareto_png(report.ok, report.judged)
    if png is None:
        sections[-1] = Section("Plots", ["No plot: no ok cell has the quality metric."])
    else:
        (out_dir / "pareto.png").write_bytes(png)
    title = f"Sweep report: {out_dir.resolve().name}"
    has_answers = samples is not None and not samples.empty
    if has_answers:
        sections.append(Section("Answers", [f"{len(samples)} answers side by side with the baseline's, with filters: "
                                            "the end of `report.html`; one row each in `samples.csv`."]))
    (out_dir / "report.md").write_text(render_markdown(sections, title))
    answers = answer_view.answer_view(samples) if has_answers else markupsafe.Markup("")
    (out_dir / "report.html").write_text(render_html(sections[:-1] if has_answers else sections, title, png, answers))
