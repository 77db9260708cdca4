"""What every section of the report reads: the matrix with labels, its ok rows, the findings, the baseline
and the recommendation thresholds, and which kinds of quality data the sweep has."""

from __future__ import annotations

from typing import Any

import pandas as pd

from runner.analysis.findings import SweepFindings
from runner.analysis.report_format import fmt, labels, labels_by_job
from runner.identity import build_id


def fidelity_protocols(ok: pd.DataFrame) -> tuple[list[str], str | None]:
    """(the fidelity protocols of the ok cells, the one the sweep ranks by: most cells, ties to `runner`)."""
    if "fidelity_protocol" not in ok:
        return [], None
    counts = ok["fidelity_protocol"].dropna().value_counts()
    if counts.empty:
        return [], None
    return sorted(counts.index), max(counts.index, key=lambda p: (counts[p], p == "runner"))


class ReportData:
    """The matrix (`df`, one row per cell) and the sweep's findings, as the section functions read them."""

    def __init__(self, df: pd.DataFrame, findings: SweepFindings | None, baseline: str | None,
                 max_kld: float, min_top1: float):
        self.df = df.assign(label=labels(df)).reset_index(drop=True)
        self.baseline = baseline
        self.max_kld, self.min_top1 = max_kld, min_top1
        self.ok = self.df[self.df["status"] == "ok"]
        # KLDs of different fidelity protocols (runner, llamacpp) are different measurements: a sweep over several
        # ranks only the cells of one (`protocol`: the most cells, ties to runner) everywhere but the Fidelity
        # section, which shows every ok cell (`fidelity_ok`) under a loud note.
        self.fidelity_ok = self.ok
        self.protocols, self.protocol = fidelity_protocols(self.ok)
        if len(self.protocols) > 1:
            self.ok = self.ok[self.ok["fidelity_protocol"].isna() | (self.ok["fidelity_protocol"] == self.protocol)]
        self.judged = "overall" in self.ok and self.ok["overall"].notna().any()
        self.checked = "check_pass" in self.ok and self.ok["check_pass"].notna().any()
        self.paired = "win_rate" in self.ok and self.ok["win_rate"].notna().any()
        self.graded_by_baseline = "judge_reference" in self.ok and (self.ok["judge_reference"] == "baseline").any()
        self.has_fidelity = "kld_mean" in self.ok and self.ok["kld_mean"].notna().any()
        self.label_by_job = labels_by_job(df)
        self.findings = findings or SweepFindings(contracts=pd.DataFrame())

    def is_base(self, row: pd.Series) -> bool:
        method = row.get("method")
        return self.baseline == build_id(row["format"], row["precision"], method if isinstance(method, str) else None)

    def base_rows(self) -> pd.DataFrame:
        """The ok cells of the baseline build."""
        return self.ok[[self.is_base(r) for _, r in self.ok.iterrows()]]

    def table(self, rows: pd.DataFrame, columns: dict[str, Any]) -> pd.DataFrame:
        """Columns of display strings; each value is a matrix column name or a function of the row."""
        out = {name: [fmt(r.get(src)) if isinstance(src, str) else src(r) for _, r in rows.iterrows()]
               for name, src in columns.items()}
        return pd.DataFrame({"Build": list(rows["label"]), **out})
