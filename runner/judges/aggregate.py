"""Per-cell judge columns for the matrix: means over valid judgments only, with the judged count shown."""

from __future__ import annotations

import math
from typing import Any

from runner.judges.rubric import CRITERIA
from runner.records import Judgment


def _mean(values: list[int]) -> float:
    return sum(values) / len(values) if values else math.nan


def judge_columns(judgments: list[tuple[str, Judgment | None]]) -> dict[str, Any]:
    """Matrix columns from one cell's (category, judgment) pairs; None means not judged.

    Failed judgments (scores None) are excluded from the means and counted in `judge_failed`;
    `judged` is "valid/total". Cost is None when any judgment's cost is unknown.
    """
    valid = [(cat, j.scores) for cat, j in judgments if j is not None and j.scores is not None]
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
