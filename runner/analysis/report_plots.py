"""The report's plot, pareto.png: quality (judge overall, else KLD) against size and against speed, with the
Pareto front."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd

from runner.analysis.report_data import ReportData
from runner.analysis.report_render import Section


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


def plots(d: ReportData, png: bytes | None) -> Section:
    """The Plots section for `png` (pareto_png's plot, None: nothing to plot)."""
    if png is None:
        return Section("Plots", ["No plot: no ok cell has the quality metric."])
    y = "judge overall" if d.judged else "KLD vs the baseline (lower is better)"
    return Section("Plots", [f"{y} against size and generation speed; the dashed line joins the Pareto-optimal "
                             "builds."], image="pareto.png")
