"""A sweep's report, formatted from its matrix and sweep findings: report.md, report.html (plots embedded),
pareto.png. Nothing is computed here that the matrix or runner/findings.py already holds.

The sections, in order, and where each is made (every section function takes a `ReportData`):
  Verdict (build × quality signal, and the recommendation)          report_recommendation.py
  Overview, Highlights, Skipped/Failed cells                        report_overview.py
  Quality, Pairwise, Checks, Checks per item, Per category          report_quality.py
  Fidelity, Speed, Size                                             report_fidelity_speed.py
  Against llama.cpp's published KLD (protocol llamacpp only)        report_published.py
  Fairness (contract, devices, hardware, parallel speed, cross-engine noise floor)   report_fairness.py
  Statistics                                                        report_statistics.py
  Plots (pareto.png)                                                report_plots.py
  Answers (report.html only)                                        answer_view.py
Shared: report_data.py (ReportData), report_format.py (display strings, build labels), report_render.py
(Section, markdown and HTML).
"""

from __future__ import annotations

from pathlib import Path

import markupsafe
import pandas as pd

from runner.analysis import answer_view
from runner.analysis.findings import SweepFindings
from runner.analysis.report_data import ReportData
from runner.analysis.report_fairness import fairness
from runner.analysis.report_fidelity_speed import fidelity, size, speed
from runner.analysis.report_format import fmt  # noqa: F401 - imported from here by runner/reproduce.py
from runner.analysis.report_overview import highlights, not_ok, overview
from runner.analysis.report_plots import pareto_png, plots
from runner.analysis.report_published import published_kld
from runner.analysis.report_quality import checks, checks_per_item, pairwise, per_category, quality
from runner.analysis.report_recommendation import MAX_KLD, MIN_TOP1, verdict_section
from runner.analysis.report_render import Section, render_html, render_markdown
from runner.analysis.report_statistics import statistics


def sections(d: ReportData, png: bytes | None) -> list[Section]:
    """The report's sections in order; `png`: the plot (None: no plot)."""
    secs = [verdict_section(d), overview(d), highlights(d), quality(d), pairwise(d), checks(d), checks_per_item(d),
            fidelity(d), published_kld(d), speed(d), size(d),
            per_category(d), fairness(d), not_ok(d, "skipped"), not_ok(d, "failed"),
            statistics(d), plots(d, png)]
    return [s for s in secs if s is not None]


def write_report(df: pd.DataFrame, findings: SweepFindings, out_dir: Path, *, baseline: str | None = None,
                 max_kld: float = MAX_KLD, min_top1: float = MIN_TOP1, samples: pd.DataFrame | None = None) -> None:
    """Write report.md, report.html and pareto.png into `out_dir`; report.html ends with the answer view
    of `samples` (runner/samples.py).

    The recommendation (runner/analysis/report_recommendation.py) is the smallest ok build with KLD ≤ `max_kld`
    (default 0.05 nats/token), top-1 agreement ≥ `min_top1` % (default 90) and a `not_worse` verdict against
    the `baseline` cell on every quality signal the sweep measured.
    """
    out_dir = Path(out_dir)
    d = ReportData(df, findings, baseline, max_kld, min_top1)
    png = pareto_png(d.ok, d.judged)
    if png is not None:
        (out_dir / "pareto.png").write_bytes(png)
    secs = sections(d, png)
    title = f"Sweep report: {out_dir.resolve().name}"
    has_answers = samples is not None and not samples.empty
    if has_answers:
        secs.append(Section("Answers", [f"{len(samples)} answers side by side with the baseline's, with filters: "
                                        "the end of `report.html`; one row each in `samples.csv`."]))
    (out_dir / "report.md").write_text(render_markdown(secs, title))
    answers = answer_view.answer_view(samples) if has_answers else markupsafe.Markup("")
    (out_dir / "report.html").write_text(render_html(secs[:-1] if has_answers else secs, title, png, answers))
