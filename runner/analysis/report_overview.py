"""The report's cells at a glance: the overview (with a requantized source's warning), the highlights (best by
quality, fastest, smallest, and which builds the recommendation keeps), and the skipped and failed cells."""

from __future__ import annotations

from typing import Any

import pandas as pd

from runner.analysis.report_data import ReportData
from runner.analysis.report_format import delta, fmt, missing, with_ci
from runner.analysis.report_recommendation import recommendation
from runner.analysis.report_render import Section
from runner.identity import build_id


def overview(d: ReportData) -> Section:
    counts = d.df["status"].value_counts()
    statuses = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("ok", "skipped", "failed"))
    models = ", ".join(sorted(d.df["model"].dropna().unique()))
    text = [f"{len(d.df)} cell{'s' * (len(d.df) != 1)}: {statuses}. Baseline: `{d.baseline or 'none'}`. "
            f"Models: {models}.", *requantized(d)]
    cols: dict[str, Any] = {"Status": "status", "Size GB": "size_gb", "Bits/weight": "bits_per_weight"}
    if d.judged:
        cols["Judge overall"] = lambda r: with_ci(r, "overall")
    cols.update({"KLD": "kld_mean", "Top-1 %": "top1_pct", "Gen tok/s": lambda r: with_ci(r, "gen_tps"),
                 "s/prompt": "s_per_prompt"})
    return Section("Overview", text, d.table(d.df, cols))


def requantized(d: ReportData) -> list[str]:
    """A model given as an already-quantized GGUF: every build is requantized from it."""
    if "requantized_from" not in d.ok:
        return []
    return [f"⚠️ **REQUANTIZED SOURCE ({model})**: the model was given as a {kind} GGUF and every build was made "
            "from it, not from the original weights. Fidelity is measured against this source, not against the "
            "true FP16, so every quantization error shown here understates the error vs the original model."
            for model, kind in d.ok.dropna(subset=["requantized_from"]).groupby("model")["requantized_from"]
            .first().items()]


def _pick(d: ReportData, col: str, largest: bool, rows: pd.DataFrame | None = None) -> str:
    rows = d.ok if rows is None else rows
    rows = rows[rows[col].notna()] if col in rows else rows.iloc[0:0]
    if rows.empty:
        return "–"
    best = rows.loc[rows[col].idxmax() if largest else rows[col].idxmin()]
    vs_base = "" if missing(best.get(f"d_{col}")) else f"; Δ vs baseline {delta(best, col, False)}"
    return f"**{best['label']}** ({col} = {fmt(best[col])}{vs_base})"


def highlights(d: ReportData) -> Section:
    if d.judged:
        quality = _pick(d, "overall", largest=True)
    elif d.has_fidelity:  # the baseline has KLD 0 by definition
        methods = d.ok["method"] if "method" in d.ok else [None] * len(d.ok)
        refs = [build_id(f, p, m if isinstance(m, str) else None) != ref
                for f, p, m, ref in zip(d.ok["format"], d.ok["precision"], methods, d.ok["fidelity_baseline"])]
        quality = _pick(d, "kld_mean", largest=False, rows=d.ok[refs])
        quality += " (lowest KLD, the baseline excluded)" if quality != "–" else ""
    else:
        quality = "– (no judge and no fidelity)"
    text = [f"Best by quality: {quality}", f"Fastest: {_pick(d, 'gen_tps', largest=True)}",
            f"Smallest: {_pick(d, 'size_gb', largest=False)}"]
    _, table = recommendation(d)  # the recommendation itself leads the report (Verdict)
    return Section("Highlights", text + ["Which builds the recommendation keeps, and why not:"] if table is not None
                   else text, table)


def not_ok(d: ReportData, status: str) -> Section:
    rows = d.df[d.df["status"] == status]
    title = f"{status.capitalize()} cells"
    if rows.empty:
        return Section(title, ["None."])
    return Section(title, [], d.table(rows, {"Job": "job", "Reason": "reason"}))
