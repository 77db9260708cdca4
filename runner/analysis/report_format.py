"""Display strings of the report and of `replay compare`: numbers, CIs, deltas vs the baseline, build labels."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from runner.identity import precision_label

NOT_DISTINCT = "≈"  # marks a delta whose CI includes 0


def missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt(x: Any) -> str:
    """Compact number: thousands separators for big values, 3 significant digits otherwise; '–' for missing."""
    if missing(x):
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
    return None if missing(x) else bool(x)


def with_ci(row: pd.Series, col: str) -> str:
    """'mean [lo, hi]' from the matrix columns col, col_lo, col_hi."""
    value, lo, hi = row.get(col), row.get(f"{col}_lo"), row.get(f"{col}_hi")
    if missing(value) or missing(lo) or missing(hi):
        return fmt(value)
    return f"{fmt(value)} [{fmt(lo)}, {fmt(hi)}]"


def delta(row: pd.Series, metric: str, is_base: bool) -> str:
    """'Δ [lo, hi]', suffixed with ≈ when the interval includes 0."""
    if is_base:
        return "baseline"
    d = row.get(f"d_{metric}")
    if missing(d):
        return "–"
    mark = f" {NOT_DISTINCT}" if flag(row.get(f"d_{metric}_sig")) is False else ""
    return f"{signed(d)} [{signed(row.get(f'd_{metric}_lo'))}, {signed(row.get(f'd_{metric}_hi'))}]{mark}"


def signed(x: float) -> str:
    return ("-" if x < 0 else "+") + fmt(abs(x))


def labels(df: pd.DataFrame) -> pd.Series:
    """'format precision', plus whichever identity fields vary in the sweep, plus '#job' if still ambiguous."""
    artifacts = df["artifact"] if "artifact" in df else pd.Series([None] * len(df), index=df.index)
    methods = df["method"] if "method" in df else pd.Series([None] * len(df), index=df.index)
    base = pd.Series([f"{f} {precision_label(str(p), a if isinstance(a, str) else None, m if isinstance(m, str) else None)}"
                      for f, p, a, m in zip(df["format"], df["precision"], artifacts, methods)], index=df.index)
    for col in ("model", "calibration", "generation", "prompts", "judge"):
        if col in df and df[col].nunique(dropna=True) > 1:
            base = base + " " + df[col].astype(str)
    if "fidelity_protocol" in df and df["fidelity_protocol"].nunique(dropna=True) > 1:  # a cross-protocol sweep
        base = base + df["fidelity_protocol"].map(lambda p: f" {p}" if isinstance(p, str) else "")
    ran = df["status"] != "skipped"  # a skipped cell never takes the plain label from one that ran
    dup = base.where(ran).duplicated(keep=False) & ran | ~ran & base.isin(base[ran])
    dup |= ~ran & base.where(~ran).duplicated(keep=False)
    return base.where(~dup, base + " #" + df["job"].astype("Int64").astype(str))


def labels_by_job(df: pd.DataFrame) -> dict[int | None, str]:
    """Each cell's label (see `labels`) by its job number."""
    return {None if missing(j) else int(j): lab for j, lab in zip(df["job"], labels(df))}
