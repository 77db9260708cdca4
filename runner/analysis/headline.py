"""The answer at the end of a sweep (and of `python -m runner.collect`): the headline table sorted by size,
the recommendation with its thresholds, the failed cells with their reason, and where the report is."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from runner.progress import cell_label
from runner.analysis.report_data import ReportData
from runner.analysis.report_format import fmt
from runner.analysis.report_overview import requantized
from runner.analysis.report_recommendation import MAX_KLD, MIN_TOP1, recommendation

COLUMNS = {"Size GB": "size_gb", "Bits/weight": "bits_per_weight", "KLD": "kld_mean", "Top-1 %": "top1_pct"}


def _quality_column(df: pd.DataFrame) -> tuple[str, str] | None:
    """Check pass rate where the prompt suite has checks, else the judge's overall score."""
    for title, col in (("Check pass %", "check_pass"), ("Judge overall", "overall"), ("Win % vs baseline", "win_rate")):
        if col in df and df[col].notna().any():
            return title, col
    return None


def _markup(text: str) -> str:
    """The report's **bold** and `code` as rich markup."""
    text = text.replace("[", r"\[")
    return re.sub(r"`(.+?)`", r"[cyan]\1[/cyan]", re.sub(r"\*\*(.+?)\*\*", r"[bold]\1[/bold]", text))


def headline_table(df: pd.DataFrame) -> Table:
    rows = df[df["status"] != "skipped"].sort_values("size_gb", na_position="last")
    columns = dict(COLUMNS)
    if quality := _quality_column(rows):
        columns[quality[0]] = quality[1]
    columns["Gen tok/s"] = "gen_tps"
    table = Table(title="Builds by size", title_justify="left")
    table.add_column("Build")
    table.add_column("Status")
    for title in columns:
        table.add_column(title, justify="right")
    for _, r in rows.iterrows():
        status = "[red]failed[/red]" if r["status"] == "failed" else r["status"]
        table.add_row(escape(_label(r)), status,
                      *(fmt(r.get(c)) for c in columns.values()))
    return table


def _label(row: pd.Series) -> str:
    artifact, method = row.get("artifact"), row.get("method")
    return cell_label(row["format"], row["precision"], artifact if isinstance(artifact, str) else None,
                      method if isinstance(method, str) else None)


def print_summary(df: pd.DataFrame, out_dir: Path, out: Console, baseline: str | None = None,
                  max_kld: float = MAX_KLD, min_top1: float = MIN_TOP1) -> None:
    if df.empty:
        out.print(f"No cells in {out_dir}.")
        return
    counts = ", ".join(f"{n} {s}" for s, n in df["status"].value_counts().items())
    out.print(f"[bold]Matrix ({counts})[/bold]")
    if (df["status"] != "skipped").any():
        out.print(headline_table(df))
    skipped = df[df["status"] == "skipped"]
    if len(skipped):
        out.print(escape(f"skipped ({len(skipped)}): " + ", ".join(_label(r)
                                                                 for _, r in skipped.iterrows())))
    data = ReportData(df, None, baseline, max_kld, min_top1)
    for line in requantized(data) + recommendation(data)[0]:
        out.print(_markup(line))
    for _, r in df[df["status"] == "failed"].iterrows():
        out.print(f"[red]failed[/red] {escape(_label(r))}: "
                  f"{escape(str(r['reason']))}")
    report = (Path(out_dir) / "report.html").resolve()
    if report.exists():
        out.print(f"Report: [link={report.as_uri()}]{report.as_uri()}[/link]")
    out.print(f"Matrix: {(Path(out_dir) / 'matrix.csv').resolve()}")
