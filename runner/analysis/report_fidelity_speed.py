"""The report's per-build measurements besides quality: fidelity vs the baseline, speed (stale answers
flagged), and size (with the converters' quantization notes)."""

from __future__ import annotations

import math

import pandas as pd

from runner.analysis.report_data import ReportData
from runner.analysis.report_format import delta, fmt, with_ci
from runner.analysis.report_render import Section
from runner.metrics.stats import MIN_PROMPTS_FOR_CI


def fidelity(d: ReportData) -> Section:
    if not d.has_fidelity and d.ok.get("answer_similarity", pd.Series(dtype=float)).isna().all():
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
        d.table(d.ok, cols))


def speed(d: ReportData) -> Section:
    cols = {"Gen tok/s": lambda r: with_ci(r, "gen_tps"),
            "Δ gen tok/s": lambda r: delta(r, "gen_tps", d.is_base(r)),
            "Prompt tok/s": lambda r: with_ci(r, "prompt_tps"), "TTFT s": lambda r: with_ci(r, "ttft_s"),
            "s/prompt": lambda r: with_ci(r, "s_per_prompt"),
            "Δ s/prompt": lambda r: delta(r, "s_per_prompt", d.is_base(r)),
            "Mean tokens": "mean_tokens", "Truncated %": "truncated_pct", "Peak RSS MB": "peak_rss_mb",
            "Cached answers": "generations_cached", "Stale answers": "speed_stale_answers", "Device": "device",
            "Host": "host", "Node": "node"}
    text = ["Token-weighted throughput (CI: bootstrap over prompts of the ratio); Δ gen tok/s is the mean "
            "per-prompt difference. A cached answer keeps the speed measured when it was generated only if that "
            "was on this host and device; answers measured elsewhere are **stale**: left out of every speed "
            "figure and counted under Stale answers."]
    stale = d.ok[d.ok.get("speed_stale_answers", pd.Series(0, index=d.ok.index)).fillna(0) > 0]
    if len(stale):
        text.append(f"⚠️ **STALE SPEED**: {', '.join(stale['label'])} reuse answers measured on another host or "
                    "device; their speed figures cover only the answers measured here (none: –). Re-measure with "
                    "`python -m runner.replay reproduce SWEEP`.")
    by_host = d.ok.sort_values(["host", "label"], na_position="last") if "host" in d.ok else d.ok
    return Section("Speed", text, d.table(by_host, cols))


def size(d: ReportData) -> Section:
    base = d.base_rows()
    base_gb = base["size_gb"].iloc[0] if len(base) else math.nan
    cols = {"Size GB": "size_gb", "× baseline": lambda r: fmt(r["size_gb"] / base_gb),
            "Bits/weight": "bits_per_weight", "Build s": "build_s", "Artifact cached": "artifact_cache_hit"}
    notes = [f"**{r['label']}**: {r['quant_notes']}" for _, r in d.ok.iterrows()
             if isinstance(r.get("quant_notes"), str)]
    text = ["Quantization notes (from the converters; e.g. llama.cpp falls back to other types for tensors whose "
            "rows do not fit a K-quant's 256-value blocks):", *notes] if notes else []
    return Section("Size", text, d.table(d.ok, cols))
