"""The verdict of every build on every quality signal the sweep measured: not worse than the baseline by the
signal's margin, worse, or inconclusive — with the reason, the power and the prompts it would take.

Signals: `overall` (the judge's 0-10 rubric score), `check_pass` (ground-truth checks, %), `pairwise_net`
(win − loss against the baseline's answers, %). Margins come from each cell's `verdict.margins`. The decision
rule (runner/metrics/paired.py: `verdict`) reads the 95 % interval of the paired delta; this module decides
when there is nothing to read (no baseline cell, too few valid values, a floor) and writes the columns
d_<s>_verdict, d_<s>_verdict_reason, d_<s>_margin, d_<s>_power, d_<s>_n_needed.
"""

from __future__ import annotations

import math
from typing import Any

from runner.metrics.paired import PairedDelta, verdict
from runner.records import CellRecord

DEFAULT_MARGINS = {"overall": 0.5, "check_pass": 5.0, "pairwise_net": 10.0}  # conf/verdict/default.yaml
NAMES = {"overall": "judge overall", "check_pass": "check pass rate", "pairwise_net": "pairwise net preference"}
MIN_VALID_SHARE = 0.9  # a signal with values for fewer of the cell's prompts (failed verdicts) is not evidence


def measured_signals(records: list[CellRecord]) -> list[str]:
    """The quality signals any ok cell of the sweep has a value for: each gets a verdict in every build."""
    found = set()
    for rec in records:
        for r in rec.results:
            if r.check is not None:
                found.add("check_pass")
            for j in r.judgments:
                if j.scores is not None:
                    found.add("pairwise_net" if j.winner is not None else "overall")
    return [s for s in DEFAULT_MARGINS if s in found]


def margin(rec: CellRecord, signal: str) -> float:
    return float(rec.margins.get(signal, DEFAULT_MARGINS[signal]))


def _valid_prompts(rec: CellRecord, signal: str) -> tuple[int, int]:
    """(prompts with a valid value of the signal, prompts that should have one)."""
    if signal == "check_pass":  # a timeout or a kill is no verdict on the answer
        checked = [r for r in rec.results if r.check is not None]
        return (len({r.prompt_id for r in checked if not r.check.transient}), len({r.prompt_id for r in checked}))
    pairwise = signal == "pairwise_net"
    valid = {r.prompt_id for r in rec.results
             if any(j.scores is not None and (j.winner is not None) == pairwise for j in r.judgments)}
    return len(valid), len({r.prompt_id for r in rec.results})


def _no_reading(rec: CellRecord, base: CellRecord | None, signal: str, baseline: str | None) -> str | None:
    """Why the signal's interval says nothing about this build, or None."""
    if signal != "pairwise_net":
        if base is None:
            return f"no baseline cell to compare with ({baseline or 'baseline'} is not an ok cell of this sweep)"
        if signal == "overall" and rec.judge_reference == "baseline":
            return ("judge.reference=baseline: builds are graded against the baseline's answers, which have no "
                    "score of their own to compare with")
        if signal == "check_pass":
            passed = [r.check.passed for r in base.results if r.check is not None]
            if passed and not any(passed):
                return "the baseline passes no check: a floor, not evidence that the build is as good"
    valid, total = _valid_prompts(rec, signal)
    if total and valid < MIN_VALID_SHARE * total:
        return (f"a value on only {valid} of {total} prompts (failed verdicts, timed-out checks are no evidence; "
                f"{MIN_VALID_SHARE:.0%} needed)")
    return None


def verdict_columns(rec: CellRecord, base: CellRecord | None, deltas: dict[str, PairedDelta], signals: list[str],
                    baseline: str | None) -> dict[str, Any]:
    """d_<s>_verdict and its companions for every signal the sweep measured."""
    cols: dict[str, Any] = {}
    for s in signals:
        m = margin(rec, s)
        d = deltas.get(s)
        cols[f"d_{s}_margin"] = m
        why = _no_reading(rec, base, s, baseline)
        if why is None and (d is None or d.n == 0):
            why = "no value of this signal in the build" if base is not None or s == "pairwise_net" else why
        if why is not None:
            cols.update({f"d_{s}_verdict": "inconclusive", f"d_{s}_verdict_reason": why, f"d_{s}_power": math.nan,
                         f"d_{s}_n_needed": math.nan})
            continue
        v = verdict(d, m)
        cols.update({f"d_{s}_verdict": v.verdict, f"d_{s}_verdict_reason": v.reason, f"d_{s}_power": v.power,
                     f"d_{s}_n_needed": d.n_needed(m)})
    return cols
