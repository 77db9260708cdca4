"""Per-cell judge columns for the matrix: means over valid judgments only, with the judged count shown."""

from __future__ import annotations

import math
from typing import Any

from runner.judges.pairwise import IDENTICAL, outcome
from runner.judges.rubric import CRITERIA
from runner.records import Judgment, PromptResult


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def judge_columns(judgments: list[tuple[str, Judgment | None]]) -> dict[str, Any]:
    """Matrix columns from one cell's (category, judgment) pairs; None means not judged.

    Failed judgments (scores None) are excluded from the means and counted in `judge_failed`;
    `judged` is "valid/total". Cost is None when any judgment's cost is unknown.
    """
    valid = [(cat, j.scores) for cat, j in judgments if j is not None and j.scores is not None and j.winner is None]
    present = [j for _, j in judgments if j is not None]
    cols: dict[str, Any] = {c: _mean([s[c] for _, s in valid]) for c in CRITERIA}
    for cat in sorted({cat for cat, _ in judgments}):
        cols[f"overall_{cat}"] = _mean([s["overall"] for c, s in valid if c == cat])
    cols["judged"] = f"{len(valid)}/{len(judgments)}"
    cols["judge_failed"] = sum(1 for j in present if j.scores is None)
    costs = [j.cost_usd for j in present]
    cols["judge_cost_usd"] = sum(costs) if costs and None not in costs else None  # type: ignore[arg-type]
    cols["judge_model"] = ", ".join(sorted({j.judge_model for j in present})) or None
    return cols


OUTCOMES = ("win", "tie", "loss")


def pairwise_outcomes(result: PromptResult) -> list[tuple[str, bool, bool]]:
    """Per judge repeat, the answer's pairwise outcome vs the baseline, whether the two orders disagreed and
    whether the answers were identical (a tie without a judge call; runner/judges/pairwise.py); failed verdicts
    drop their repeat. Empty: not judged pairwise."""
    first = [j for j in result.judgments if j.order == 0]
    second = [j for j in result.judgments if j.order == 1]
    out = []
    for a, b in zip(first, second):
        if (o := outcome(a.winner if a.scores is not None else None, b.winner if b.scores is not None else None)):
            out.append((*o, a.reasoning == b.reasoning == IDENTICAL))
    return out


def pairwise_value(result: PromptResult, what: str) -> float:
    """One answer's win / tie / loss / identical share (%), position inconsistency (% of the pairs the judge
    saw: identical answers never reach it), or net preference (win − loss)."""
    outcomes = pairwise_outcomes(result)
    if what == "position_inconsistency":
        outcomes = [o for o in outcomes if not o[2]]
    if not outcomes:
        return math.nan
    if what == "position_inconsistency":
        return 100.0 * sum(inconsistent for _, inconsistent, _ in outcomes) / len(outcomes)
    if what == "identical_rate":
        return 100.0 * sum(identical for _, _, identical in outcomes) / len(outcomes)
    if what == "net":
        return 100.0 * sum((o == "win") - (o == "loss") for o, _, _ in outcomes) / len(outcomes)
    return 100.0 * sum(o == what.removesuffix("_rate") for o, _, _ in outcomes) / len(outcomes)


def pairwise_columns(results: list[PromptResult]) -> dict[str, Any]:
    """win_rate, tie_rate, loss_rate, identical_rate (% of judged answers; identical answers are ties),
    position_inconsistency (% of the pairs the judge saw) and pairwise_judged (k/n)."""
    paired = [r for r in results if any(j.order is not None for j in r.judgments)]
    if not paired:
        return {}
    judged = [r for r in paired if pairwise_outcomes(r)]
    cols = {f"{o}_rate": _mean([pairwise_value(r, f"{o}_rate") for r in judged]) for o in (*OUTCOMES, "identical")}
    seen = [v for r in judged if not math.isnan(v := pairwise_value(r, "position_inconsistency"))]
    cols["position_inconsistency"] = _mean(seen)
    cols["pairwise_judged"] = f"{len(judged)}/{len(results)}"
    return cols
