"""The report's per-build measurements besides quality: fidelity vs the baseline, speed (stale answers
flagged; speed=bench's mean ± stddev and CV, a CV above 10 % flagged), and size (with the converters'
quantization notes)."""

from __future__ import annotations

import math

import pandas as pd

from runner.analysis.report_data import ReportData
from runner.analysis.report_format import delta, flag, fmt, with_ci
from runner.analysis.report_render import Section
from runner.metrics.stats import MIN_PROMPTS_FOR_CI
from runner.speed import CV_WARN_PCT


def fidelity(d: ReportData) -> Section:
    rows = d.fidelity_ok
    if not d.has_fidelity and rows.get("answer_similarity", pd.Series(dtype=float)).isna().all():
        return Section("Fidelity", ["No fidelity metrics (fidelity.enabled=false)."])
    protocols = rows.get("fidelity_protocol", pd.Series(dtype=object)).dropna()
    llamacpp = (protocols == "llamacpp").any()
    cols = {"Baseline": "fidelity_baseline", "KLD mean": lambda r: with_ci(r, "kld_mean"), "KLD p99": "kld_p99",
            "Top-1 %": "top1_pct", "PPL": "ppl", "ΔPPL": "dppl",
            "Answer agreement": lambda r: with_ci(r, "answer_agreement"),
            "Answer similarity": lambda r: with_ci(r, "answer_similarity")}
    if llamacpp:  # llama-perplexity's summary lines, to hold against published tables
        cols.update({"KLD median": "kld_median", "KLD p95": "kld_p95", "KLD max": "kld_max",
                     "KLD ± (per token)": "kld_se_token", "RMS Δp %": "rms_dp", "PPL base": "baseline_ppl"})
    cols["KLD top-k"] = "kld_top_k"
    if len(protocols):
        cols["Protocol"] = "fidelity_protocol"
    text = []
    if len(d.protocols) > 1:
        text.append(f"⚠️ **CROSS-PROTOCOL SWEEP**: this sweep measured fidelity under {' and '.join(d.protocols)} "
                    "(`fidelity.protocol`). Their KLDs are different measurements (which positions are scored, "
                    "top-k or full vocabulary) and are never compared: each cell is held against the baseline cell "
                    f"of its own protocol, and the verdict, recommendation, highlights and plots use only the "
                    f"**{d.protocol}** cells.")
    text.append("KLD(baseline ‖ build) per token on identical token ids (CI: mean ± 1.96 SE from per-chunk means, "
                f"shown from {MIN_PROMPTS_FOR_CI} chunks); top-1: same argmax token; answer agreement: exact-match share "
                "of answers vs the baseline's; similarity: token-sequence similarity. The baseline cell's own KLD is 0 "
                "by construction.")
    if (protocols == "runner").any() or protocols.empty:
        text.append("Protocol `runner`: every position of each chunk. With `fidelity.top_k=K` the baseline keeps its "
                    "top-K log-probs plus one tail bucket per position, so the KLD shown is a **lower bound** of the "
                    "full-vocabulary KLD (exact with `fidelity.top_k=all`).")
    if llamacpp:
        text.append("Protocol `llamacpp`: llama-perplexity's `--kl-divergence` (BOS first in each chunk, only the "
                    "second half of each chunk scored, full-vocabulary KLD): comparable with llama.cpp's and "
                    "mlx-kld's published tables on the same corpus (`fidelity_corpus_sha` in matrix.csv). "
                    "KLD ± is llama-perplexity's per-token SE (tokens taken as independent); the CI uses the "
                    "per-chunk SE (mlx-kld's, clustered by sequence). PPL base is the baseline's own PPL (llama-"
                    "perplexity's Final estimate on it).")
    return Section("Fidelity", text, d.table(rows, cols))


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
    benched = d.ok[d.ok["bench_pp_tps"].notna() | d.ok["bench_tg_tps"].notna()] if "bench_pp_tps" in d.ok else d.ok[:0]
    if len(benched):
        cols = {**{k: v for k, v in cols.items() if k not in ("Device", "Host", "Node")},
                "Bench pp tok/s": lambda r: _mean_sd_cv(r, "pp"), "Bench tg tok/s": lambda r: _mean_sd_cv(r, "tg"),
                "Bench": _bench_setup, **{k: cols[k] for k in ("Device", "Host", "Node")}}
        text += _bench_text(benched)
    by_host = d.ok.sort_values(["host", "label"], na_position="last") if "host" in d.ok else d.ok
    return Section("Speed", text, d.table(by_host, cols))


def _mean_sd_cv(r: pd.Series, test: str) -> str:
    """'mean ± sd (CV x %)' of a bench test's per-repetition tok/s, ⚠️ when CV > CV_WARN_PCT."""
    mean, sd, cv = r.get(f"bench_{test}_tps"), r.get(f"bench_{test}_sd"), r.get(f"bench_{test}_cv")
    if pd.isna(mean):
        return "–"
    if pd.isna(sd):
        return f"{fmt(mean)} (r=1: no spread)"
    warn = " ⚠️" if cv > CV_WARN_PCT else ""
    return f"{fmt(mean)} ± {fmt(sd)} (CV {cv:.1f} %{warn})"


def _bench_setup(r: pd.Series) -> str:
    if pd.isna(r.get("bench_pp")):
        return "–"
    threads = "" if pd.isna(r.get("bench_threads_pp")) else \
        f", threads {int(r['bench_threads_pp'])}/{int(r['bench_threads_tg'])}"
    cached = ", cached" if flag(r.get("bench_cached")) else ""
    return f"pp{int(r['bench_pp'])} tg{int(r['bench_tg'])} ×{int(r['bench_r'])}{threads}{cached}"


def _bench_text(benched: pd.DataFrame) -> list[str]:
    text = ["**Bench** (`speed=bench`): llama-bench's protocol in each build's own engine: pp = a random-token "
            "prompt evaluated from an empty context, tg = tokens fed one at a time from an empty context (nothing "
            "sampled, no EOS), one untimed warm-up, r timed repetitions; mean ± sample stddev of the per-repetition "
            "tok/s and CV (stddev / mean), as `llama-bench` prints them; threads: prompt / one-token steps. "
            "Comparable with published `llama-bench` (pp512 / tg128) and `mlx_lm.benchmark` figures on the same "
            "hardware and threads, and across formats, unlike the answers' speed (one pass over whatever the "
            "prompts produced)."]
    noisy = []
    for _, r in benched.iterrows():
        over = [f"{t} {r[f'bench_{t}_cv']:.1f} %" for t in ("pp", "tg")
                if not pd.isna(r.get(f"bench_{t}_cv")) and r[f"bench_{t}_cv"] > CV_WARN_PCT]
        if over:
            noisy.append(f"{r['label']} ({', '.join(over)})")
    if noisy:
        text.append(f"⚠️ **NOISY SPEED: CV > {CV_WARN_PCT:.0f} %** for {'; '.join(noisy)}. The repetitions disagree "
                    "by more than a tenth: the machine was busy (other processes, other cells), throttling, or "
                    "swapping, and these numbers cannot be held against published ones. Re-run on an idle machine "
                    "(`speed.cache=false` to re-measure, or a higher `speed.r`).")
    parallel = benched[benched["bench_parallel_jobs"].fillna(1) > 1] if "bench_parallel_jobs" in benched else benched[:0]
    if len(parallel):
        text.append(f"⚠️ **BENCH NOT COMPARABLE**: {', '.join(parallel['label'])} were benched while the launcher "
                    "ran other cells at once (parallel_jobs > 1).")
    return text


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
