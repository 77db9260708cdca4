"""The matrix builder: cell records → one pandas DataFrame, one row per cell, and its CSV / Markdown files.

Record fields keep their names as columns, prefixed by their record where they would be ambiguous
(`artifact.cache_hit` → `artifact_cache_hit`); statistics columns come from runner/matrix_stats.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from runner.identity import IDENTITY_GROUPS, parse_override, precision_label
from runner.judges.aggregate import judge_columns, pairwise_columns
from runner.analysis.matrix_stats import stat_columns
from runner.records import CellRecord
from runner.sweep import Job, Sweep


def _nan(x: Any) -> float:
    return math.nan if x is None else float(x)


def record_row(rec: CellRecord) -> dict[str, Any]:
    c = rec.cell
    row: dict[str, Any] = {"job": c.job_num, "model": c.model, "format": c.format, "precision": c.precision,
                           "method": c.method, "calibration": c.calibration,
                           "generation": c.generation, "prompts": c.prompts, "judge": c.judge,
                           "status": rec.status, "reason": rec.reason, "artifact": c.artifact}
    a = rec.artifact
    row.update({
        "bits_per_weight": _nan(a.bits_per_weight) if a else math.nan,
        "size_gb": a.size_bytes / 1e9 if a else math.nan,
        "build_s": a.build_s if a else math.nan,
        "artifact_cache_hit": a.cache_hit if a else None,
        "quant_notes": "; ".join(a.warnings) if a and a.warnings else None,  # e.g. llama.cpp's fallback lines
        "requantized_from": rec.source.requantized_from if rec.source else None,
    })
    rt, host = rec.runtime, rec.host
    row.update({"device": rt.device if rt else None, "compute_dtype": rt.compute_dtype if rt else None,
                "host": host.hardware if host else None,
                "host_fingerprint": host.fingerprint if host else None, "node": host.node if host else None,
                "slurm_job": host.scheduler_job if host else None,
                "parallel_jobs": rt.parallel_jobs if rt else None})
    s = rec.speed
    row.update({
        "n_answers": s.n if s else 0,
        "s_per_prompt": s.s_per_prompt if s else math.nan,
        "prompt_tps": s.prompt_tps if s else math.nan,
        "gen_tps": s.gen_tps if s else math.nan,
        "ttft_s": s.ttft_s if s else math.nan,
        "mean_tokens": s.mean_tokens if s else math.nan,
        "truncated_pct": s.truncated_pct if s else math.nan,
        "peak_rss_mb": _nan(s.peak_rss_mb) if s else math.nan,
        "generations_cached": sum(r.cache_hit for r in rec.results),
        "speed_stale_answers": s.stale_answers if s else 0,
        "speed_parallel_jobs": s.parallel_jobs if s else None,
    })
    row.update(bench_columns(rec))
    row.update(judge_columns([(r.category, j) for r in rec.results for j in r.judgments or [None]]))
    row.update(pairwise_columns(rec.results))
    row.update({"judge_reference": rec.judge_reference, "judge_note": rec.judge_note})
    f = rec.fidelity
    row.update({
        "kld_mean": f.kld_mean if f else math.nan, "kld_se": f.kld_se if f else math.nan,
        "kld_se_token": _nan(f.kld_se_token) if f else math.nan,
        "kld_median": f.kld_median if f else math.nan, "kld_p95": _nan(f.kld_p95) if f else math.nan,
        "kld_p99": f.kld_p99 if f else math.nan, "kld_max": f.kld_max if f else math.nan,
        "top1_pct": f.top1_pct if f else math.nan, "rms_dp": f.rms_dp if f else math.nan,
        "ppl": f.ppl if f else math.nan, "baseline_ppl": f.baseline_ppl if f else math.nan,
        "dppl": f.dppl if f else math.nan,
        "fidelity_baseline": f.baseline if f else None,
        "kld_top_k": (f.top_k if f.top_k is not None else "all") if f else None,
        # runner | llamacpp: KLDs of different protocols are different measurements, never ranked together
        "fidelity_protocol": f.protocol if f else None,
        "fidelity_corpus_sha": f.corpus_sha or None if f else None,
        "fidelity_tokens": f.n_tokens if f else math.nan,
    })
    definite = [r for r in rec.results if r.check is not None and not r.check.transient]  # timeouts: no verdict
    checked = [r.check.passed for r in definite]
    row["check_pass"] = 100.0 * sum(checked) / len(checked) if checked else math.nan
    row["checked"] = f"{sum(checked)}/{len(checked)}" if checked else None
    row["check_transient"] = sum(r.check is not None and r.check.transient for r in rec.results)
    for cat in sorted({r.category for r in definite}):
        passed = [r.check.passed for r in definite if r.category == cat]
        row[f"check_pass_{cat}"] = 100.0 * sum(passed) / len(passed)
    agree = [r.agreement for r in rec.results if r.agreement]
    row["answer_agreement"] = sum(x["exact"] for x in agree) / len(agree) if agree else math.nan
    row["answer_similarity"] = sum(x["token_similarity"] for x in agree) / len(agree) if agree else math.nan
    return row


def bench_columns(rec: CellRecord) -> dict[str, Any]:
    """speed=bench (llama-bench's protocol): mean tok/s of the r repetitions, sample stddev, CV in %; empty
    (NaN / None) for a cell without a bench."""
    b = rec.bench
    nan = math.nan
    return {
        "bench_pp_tps": b.pp_tps if b else nan, "bench_pp_sd": _nan(b.pp_sd) if b else nan,
        "bench_pp_cv": _nan(b.pp_cv) if b else nan,
        "bench_tg_tps": b.tg_tps if b else nan, "bench_tg_sd": _nan(b.tg_sd) if b else nan,
        "bench_tg_cv": _nan(b.tg_cv) if b else nan,
        "bench_pp": b.pp if b else None, "bench_tg": b.tg if b else None, "bench_r": b.r if b else None,
        "bench_threads_pp": b.threads_pp if b else None, "bench_threads_tg": b.threads_tg if b else None,
        "bench_cached": b.cache_hit if b else None, "bench_parallel_jobs": b.parallel_jobs if b else None,
    }


def missing_row(job: Job) -> dict[str, Any]:
    """A job without a readable result.json (killed, or a corrupt record) is a failed row, not a gap."""
    ident: dict[str, Any] = {"job": job.num}
    for item in job.overrides():
        key, value = parse_override(item)
        if key in IDENTITY_GROUPS and value is not None:
            ident[key] = value
    return {**ident, "status": "failed", "reason": job.problem}


def _with_ci_beside(columns: list[str]) -> list[str]:
    """Each `m_lo`, `m_hi` right after `m`; the `d_*` delta columns last."""
    deltas = [c for c in columns if c.startswith("d_")]
    bounds = {c for c in columns if c.endswith(("_lo", "_hi")) and c not in deltas}
    ordered = []
    for c in columns:
        if c not in bounds and c not in deltas:
            ordered += [c] + [b for b in (f"{c}_lo", f"{c}_hi") if b in bounds]
    return ordered + [c for c in columns if c in bounds and c not in ordered] + deltas


def sweep_matrix(sweep: Sweep) -> pd.DataFrame:
    """The matrix of a sweep: a row per record, a failed row per job without a readable one."""
    return build_matrix(sweep.records, [missing_row(j) for j in sweep.jobs if j.record is None], sweep.baseline())


def build_matrix(records: list[CellRecord], extra_rows: list[dict[str, Any]] = (),
                 baseline: str | None = None) -> pd.DataFrame:
    """One row per cell; statistics columns (runner.analysis.matrix_stats) beside their means, deltas vs `baseline`."""
    stats = stat_columns(records, baseline)
    df = pd.DataFrame([record_row(r) | s for r, s in zip(records, stats)] + list(extra_rows))
    if df.empty:
        return df
    df = df[_with_ci_beside(list(df.columns))]
    df["_s"] = df["status"].map({"ok": 0, "failed": 1, "skipped": 2})
    df = df.sort_values(["_s", "model", "format", "job"], na_position="last").drop(columns="_s")
    return df.reset_index(drop=True)


# matrix.md: the columns a reader compares builds by; matrix.csv has every column.
HEADLINE = ("build", "status", "size_gb", "bits_per_weight", "kld_mean", "top1_pct", "overall", "gen_tps",
            "s_per_prompt", "reason")


def headline(df: pd.DataFrame) -> pd.DataFrame:
    """The headline view: build, status, size, bits/weight, KLD, top-1, judge overall with its CI, speed, reason."""
    methods = df.get("method", [None] * len(df))
    out = df.assign(build=[f"{f} {precision_label(p, a if isinstance(a, str) else None, m if isinstance(m, str) else None)}"
                           for f, p, a, m in zip(df["format"], df["precision"], df.get("artifact", [None] * len(df)),
                                                 methods)])
    if "overall" in out:
        def with_ci(r: pd.Series) -> str:
            if pd.isna(r["overall"]):
                return ""
            ci = "" if pd.isna(r.get("overall_lo")) else f" [{r['overall_lo']:.3g}, {r['overall_hi']:.3g}]"
            return f"{r['overall']:.3g}{ci}"
        out["overall"] = out.apply(with_ci, axis=1)
    cols = [c for c in HEADLINE if c in out]
    varying = [c for c in ("model", "generation", "prompts", "judge") if c in out and out[c].nunique() > 1]
    out = out[cols[:1] + varying + cols[1:]]
    return out.astype(object).where(out.notna(), None)  # tabulate prints None as missingval, NaN as "nan"


def write_matrix(df: pd.DataFrame, out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    df.to_csv(out_dir / "matrix.csv", index=False)
    table = headline(df).to_markdown(index=False, floatfmt=".4g", missingval="") if not df.empty else "(no cells)"
    (out_dir / "matrix.md").write_text(f"{table}\n\nEvery column: matrix.csv (see README, Matrix columns).\n")
    return out_dir / "matrix.csv"
