"""The report's "Against llama.cpp's published KLD" section: each GGUF build measured under
`fidelity.protocol=llamacpp` beside llama.cpp's own scoreboard for the same type (LLaMA 3 8B, wikitext-2,
runner/data/llamacpp_kld_llama3_8b.csv) — a different model under the same protocol, so the absolute numbers
differ and the ordering of the types is what carries over."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pandas as pd

from runner.analysis.report_data import ReportData
from runner.analysis.report_format import fmt
from runner.analysis.report_render import Section

PUBLISHED = Path(__file__).resolve().parent.parent / "data" / "llamacpp_kld_llama3_8b.csv"
PUBLISHED_IMATRIX = "WT 10m"  # the imatrix row llama.cpp lists for most types (10M tokens of wikitext-2 train)


@cache
def published() -> pd.DataFrame:
    return pd.read_csv(PUBLISHED, comment="#", dtype={"type": str, "imatrix": str})


def published_row(precision: str, method: str | None) -> pd.Series | None:
    """llama.cpp's row for this type, with an imatrix when the build has one (its 10M-token row when listed)."""
    table = published()
    rows = table[table["type"] == str(precision).lower()]
    rows = rows[rows["imatrix"] == "none"] if method in (None, "none") else rows[rows["imatrix"] != "none"]
    if rows.empty:
        return None
    preferred = rows[rows["imatrix"] == PUBLISHED_IMATRIX]
    return (preferred if len(preferred) else rows).iloc[0]


def discordant_pairs(ours: list[float], theirs: list[float]) -> list[tuple[int, int]]:
    """Index pairs the two KLD columns order differently (ties count as agreeing)."""
    return [(i, j) for i in range(len(ours)) for j in range(i + 1, len(ours))
            if (ours[i] - ours[j]) * (theirs[i] - theirs[j]) < 0]


def published_kld(d: ReportData) -> Section | None:
    """None when no GGUF cell was measured under protocol llamacpp (nothing to hold against the table)."""
    if "fidelity_protocol" not in d.fidelity_ok:
        return None
    cells = d.fidelity_ok[(d.fidelity_ok["fidelity_protocol"] == "llamacpp") & (d.fidelity_ok["format"] == "gguf")
                          & d.fidelity_ok["kld_mean"].notna()]
    matched = []
    for _, r in cells.iterrows():
        method = r.get("method") if isinstance(r.get("method"), str) else None
        if d.is_base(r) or (pub := published_row(r["precision"], method)) is None:
            continue
        matched.append((r, pub))
    if not matched:
        return None
    table = pd.DataFrame({
        "Build": [r["label"] for r, _ in matched],
        "KLD (this model)": [fmt(r["kld_mean"]) for r, _ in matched],
        "Top-1 % (this model)": [fmt(r["top1_pct"]) for r, _ in matched],
        "KLD llama.cpp (LLaMA 3 8B)": [f"{p['kld']:.6f}" for _, p in matched],
        "imatrix (llama.cpp)": [p["imatrix"] for _, p in matched],
        "RMS Δp % (this / llama.cpp)": [f"{fmt(r.get('rms_dp'))} / {p['rms_dp_pct']}" for r, p in matched],
    })
    ours = [float(r["kld_mean"]) for r, _ in matched]
    bad = discordant_pairs(ours, [float(p["kld"]) for _, p in matched])
    if len(matched) < 2:
        order = "One build: no ordering to compare."
    elif not bad:
        order = f"The {len(matched)} builds rank in the same order as in llama.cpp's table."
    else:
        names = [f"{matched[i][0]['label']} vs {matched[j][0]['label']}" for i, j in bad]
        order = (f"**The order differs from llama.cpp's for {len(bad)} of {len(matched) * (len(matched) - 1) // 2} "
                 f"pairs**: {'; '.join(names)}. Small models and requantized sources can reorder neighbouring types; "
                 "a pair far apart in llama.cpp's table that flips here deserves a look.")
    return Section("Against llama.cpp's published KLD", [
        "**Different model, same protocol.** llama.cpp's scoreboard (tools/perplexity/README.md: LLaMA 3 8B vs its "
        "FP16, wikitext-2 raw test, n_ctx 512, `llama-perplexity --kl-divergence`) beside this sweep's builds "
        "measured with `fidelity.protocol=llamacpp`. Absolute KLDs depend on the model and corpus (small models "
        "lose more to the same type); the ordering of the types is what carries over.", order], table)
