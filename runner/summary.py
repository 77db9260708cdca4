"""Statistics columns for the matrix: bootstrap CIs of per-cell means and paired deltas vs the baseline cell.

Every CI is a seeded percentile bootstrap over a cell's answers (prompts × repeats), so re-collecting
gives identical numbers. Paired deltas (cell − baseline) pair answers by (prompt id, repeat); repeat r
of every cell used seed + r, so pairs share their sampler seed.

Column names, for a metric `m` of the matrix:
  m_lo, m_hi                       95% CI of the cell's mean (ratio of sums for gen_tps / prompt_tps;
                                   kld_mean: mean ± z·SE from the record, per-token KLDs are not stored)
  d_m, d_m_lo, d_m_hi, d_m_sig     mean paired difference vs the baseline cell, its CI, and whether the
                                   CI excludes 0 (False = not distinguishable from the baseline)
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from runner.judges.rubric import CRITERIA
from runner.judging import all_judgments
from runner.metrics.stats import bootstrap_ci, paired_delta
from runner.records import CellRecord, PromptResult
from runner.speed import decode_tokens_and_seconds

N_BOOT = 2000
LEVEL = 0.95
NON_CONTEXT_KEYS = ("format", "precision")  # overrides that may differ between a cell and its baseline


def _score(criterion: str) -> Callable[[PromptResult], float]:
    def get(r: PromptResult) -> float:  # mean over judge repeats
        scores = [j.scores[criterion] for j in all_judgments(r) if j.scores is not None]
        return float(np.mean(scores)) if scores else math.nan
    return get


def _agreement(key: str) -> Callable[[PromptResult], float]:
    return lambda r: float(r.agreement[key]) if r.agreement else math.nan


def _answer_gen_tps(r: PromptResult) -> float:
    g = r.generation
    return g.gen_tps if g.completion_tokens > 1 and g.gen_tps > 0 else math.nan


# Per-answer values whose plain mean is the matrix column.
MEANS: dict[str, Callable[[PromptResult], float]] = {
    **{c: _score(c) for c in CRITERIA},
    "answer_agreement": _agreement("exact"),
    "answer_similarity": _agreement("token_similarity"),
    "s_per_prompt": lambda r: r.generation.wall_s,
    "ttft_s": lambda r: r.generation.ttft_s,
    "mean_tokens": lambda r: float(r.generation.completion_tokens),
}


# (numerator, denominator) per answer whose ratio of sums is the matrix column (as in runner/speed.py).
RATIOS: dict[str, Callable[[PromptResult], tuple[float, float]]] = {
    "gen_tps": lambda r: decode_tokens_and_seconds(r.generation),
    "prompt_tps": lambda r: (r.generation.prompt_tokens, r.generation.ttft_s),
}

# Per-answer values paired against the baseline cell.
DELTAS: dict[str, Callable[[PromptResult], float]] = {
    **{c: _score(c) for c in CRITERIA},
    "gen_tps": _answer_gen_tps,
    "s_per_prompt": MEANS["s_per_prompt"],
}


def ratio_ci(num: np.ndarray, den: np.ndarray, n_boot: int = N_BOOT, level: float = LEVEL,
             seed: int = 0) -> tuple[float, float, float]:
    """(sum(num)/sum(den), lo, hi): percentile bootstrap resampling (num, den) pairs together."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    n = len(num)
    if n == 0 or den.sum() <= 0:
        return math.nan, math.nan, math.nan
    point = float(num.sum() / den.sum())
    if n == 1:
        return point, point, point
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    with np.errstate(divide="ignore", invalid="ignore"):
        reps = num[idx].sum(axis=1) / den[idx].sum(axis=1)
    reps = reps[np.isfinite(reps)]
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(reps, [alpha, 1.0 - alpha])
    return point, float(lo), float(hi)


def _context(rec: CellRecord) -> tuple[Any, ...]:
    """What a cell and its baseline share: everything but format and precision."""
    c = rec.cell
    rest = sorted(o for o in c.overrides if o.lstrip("+~").partition("=")[0] not in NON_CONTEXT_KEYS)
    return c.model, c.generation, c.prompts, c.judge, tuple(rest)


def is_baseline(rec: CellRecord, baseline: str | None) -> bool:
    return baseline is not None and f"{rec.cell.format}_{rec.cell.precision}" == baseline


def find_baseline(rec: CellRecord, records: list[CellRecord], baseline: str | None) -> CellRecord | None:
    """The ok baseline cell (e.g. `gguf_fp16`) of the same model, generation, prompts, judge and other overrides."""
    ctx = _context(rec)
    for other in records:
        if other.status == "ok" and is_baseline(other, baseline) and _context(other) == ctx:
            return other
    return None


def _ci_columns(rec: CellRecord, n_boot: int, level: float) -> dict[str, float]:
    cols: dict[str, float] = {}
    for name, get in MEANS.items():
        _, cols[f"{name}_lo"], cols[f"{name}_hi"] = bootstrap_ci([get(r) for r in rec.results], n_boot, level)
    for name, get in RATIOS.items():
        pairs = np.array([get(r) for r in rec.results], np.float64).reshape(-1, 2)
        _, cols[f"{name}_lo"], cols[f"{name}_hi"] = ratio_ci(pairs[:, 0], pairs[:, 1], n_boot, level)
    by_cat: dict[str, list[float]] = defaultdict(list)
    for r in rec.results:
        by_cat[r.category].append(MEANS["overall"](r))
    for cat, values in sorted(by_cat.items()):
        _, cols[f"overall_{cat}_lo"], cols[f"overall_{cat}_hi"] = bootstrap_ci(values, n_boot, level)
    f = rec.fidelity
    z = NormalDist().inv_cdf((1 + level) / 2)
    cols["kld_mean_lo"] = max(f.kld_mean - z * f.kld_se, 0.0) if f else math.nan  # normal approx., KLD ≥ 0
    cols["kld_mean_hi"] = f.kld_mean + z * f.kld_se if f else math.nan
    return cols


def _delta_columns(rec: CellRecord, base: CellRecord, n_boot: int, level: float) -> dict[str, Any]:
    base_by_key = {(r.prompt_id, r.repeat): r for r in base.results}
    pairs = [(base_by_key[(r.prompt_id, r.repeat)], r) for r in rec.results if (r.prompt_id, r.repeat) in base_by_key]
    cols: dict[str, Any] = {}
    for name, get in DELTAS.items():
        d = paired_delta([get(b) for b, _ in pairs], [get(c) for _, c in pairs], n_boot, level)
        cols.update({f"d_{name}": d["delta"], f"d_{name}_lo": d["lo"], f"d_{name}_hi": d["hi"],
                     f"d_{name}_sig": d["distinguishable"] if d["n"] else None})
    return cols


def stat_columns(records: list[CellRecord], baseline: str | None, n_boot: int = N_BOOT,
                 level: float = LEVEL) -> list[dict[str, Any]]:
    """Statistics columns per record (same order as `records`); deltas only where a baseline cell exists.

    The baseline cell itself gets no deltas (they would be 0 by construction).
    """
    rows = []
    for rec in records:
        cols = _ci_columns(rec, n_boot, level)
        base = find_baseline(rec, records, baseline) if rec.results else None
        if base is not None and base is not rec:
            cols.update(_delta_columns(rec, base, n_boot, level))
        rows.append(cols)
    return rows


@dataclass
class JudgeNoise:
    """Spread of `overall` over verdicts on identical answers (same prompt, repeat and text)."""

    groups: int  # answers judged more than once
    judgments: int
    mean_abs_diff: float  # mean |Δ overall| over all pairs within a group
    max_abs_diff: float


def judge_noise(records: list[CellRecord]) -> JudgeNoise | None:
    """The judge's own noise floor: the spread of independent verdicts on the same answer text — judge
    repeats (`judge.repeats`), and for free, identical answers written by different builds (judgment cache
    keys include the generation; one key counts once). None: no answer was judged twice.
    """
    groups: dict[tuple[str, int, str], dict[str, float]] = defaultdict(dict)
    for rec in records:
        for r in rec.results:
            for j in all_judgments(r):
                if j.scores is not None:
                    groups[(r.prompt_id, r.repeat, r.answer)][j.key or id(j)] = float(j.scores["overall"])
    diffs, n_groups, n_judgments = [], 0, 0
    for scores in groups.values():
        v = list(scores.values())
        if len(v) < 2:
            continue
        n_groups += 1
        n_judgments += len(v)
        diffs += [abs(a - b) for i, a in enumerate(v) for b in v[i + 1:]]
    if not diffs:
        return None
    return JudgeNoise(n_groups, n_judgments, float(np.mean(diffs)), float(np.max(diffs)))
