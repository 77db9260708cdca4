"""Statistics columns for the matrix: prompt-level CIs of per-cell means and paired deltas vs the baseline cell.

Every CI is a seeded percentile bootstrap over prompts (all repeats and judge repeats of a prompt move
together), so re-collecting gives identical numbers; see runner/metrics/stats.py for the rules. Paired
deltas (cell − baseline) pair answers by (prompt id, repeat): repeat r of every cell used seed + r.

Column names, for a metric `m` of the matrix:
  m_lo, m_hi          95% CI of the cell's mean; empty below 3 prompts (kld_mean: mean ± z·SE from
                      per-chunk means, empty below 3 chunks)
  n_prompts           prompts with an answer; overall_<category>_n: prompts of that category
  d_m, d_m_lo, d_m_hi mean per-prompt difference vs the baseline cell and its CI
  d_m_p               exact sign-flip test p-value over prompts (unadjusted)
  d_m_sig             Holm-adjusted p ≤ 0.05 within the metric's family (judge criteria together; each
                      speed metric alone); never true below 6 prompts
  d_m_mdd             minimum detectable difference (80% power): smaller true differences could be missed
  d_m_n_needed        prompts needed to detect TARGETS[m] (0.5 judge points, 5 points of check_pass) at the
                      spread of this cell's per-prompt differences
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from runner.host import measured_on
from runner.identity import answer_key, find_baseline
from runner.judges.aggregate import pairwise_value
from runner.judges.rubric import CRITERIA
from runner.metrics.stats import (MIN_PROMPTS_FOR_CI, cluster_mean_ci, cluster_ratio_ci, holm,
                                  min_prompts_for_significance, paired_prompt_delta, prompts_needed)
from runner.records import CellRecord, PromptResult
from runner.speed import comparable, decode_tokens_and_seconds

N_BOOT = 2000
LEVEL = 0.95
ALPHA = 1.0 - LEVEL
Getter = Callable[[PromptResult], float]


def _score(criterion: str) -> Getter:
    def get(r: PromptResult) -> float:  # mean over judge repeats
        scores = [j.scores[criterion] for j in r.judgments if j.scores is not None and j.winner is None]
        return float(np.mean(scores)) if scores else math.nan
    return get


def _agreement(key: str) -> Getter:
    return lambda r: float(r.agreement[key]) if r.agreement else math.nan


def _answer_gen_tps(r: PromptResult) -> float:
    g = r.generation
    return g.gen_tps if g.completion_tokens > 1 and g.gen_tps > 0 else math.nan


def _check_pass(r: PromptResult) -> float:
    return 100.0 * r.check.passed if r.check is not None else math.nan


def _pairwise(what: str) -> Getter:
    return lambda r: pairwise_value(r, what)


# Per-answer values whose plain mean is the matrix column.
MEANS: dict[str, Getter] = {
    **{c: _score(c) for c in CRITERIA},
    "check_pass": _check_pass,
    **{m: _pairwise(m) for m in ("win_rate", "tie_rate", "loss_rate", "position_inconsistency")},
    "answer_agreement": _agreement("exact"),
    "answer_similarity": _agreement("token_similarity"),
    "s_per_prompt": lambda r: r.generation.wall_s,
    "ttft_s": lambda r: r.generation.ttft_s,
    "mean_tokens": lambda r: float(r.generation.completion_tokens),
}
SPEED = {"s_per_prompt", "ttft_s", "gen_tps", "prompt_tps"}  # NaN for answers measured elsewhere

# (numerator, denominator) per answer whose ratio of sums is the matrix column (as in runner/speed.py).
RATIOS: dict[str, Callable[[PromptResult], tuple[float, float]]] = {
    "gen_tps": lambda r: decode_tokens_and_seconds(r.generation),
    "prompt_tps": lambda r: (r.generation.prompt_tokens, r.generation.ttft_s),
}

# Per-answer values paired against the baseline cell, by family (Holm adjusts within a family).
DELTAS: dict[str, Getter] = {**{c: _score(c) for c in CRITERIA}, "check_pass": _check_pass,
                             "gen_tps": _answer_gen_tps, "s_per_prompt": MEANS["s_per_prompt"]}
# The difference worth detecting, per quality metric: d_m_n_needed says how many prompts that takes.
TARGETS: dict[str, float] = {**dict.fromkeys(CRITERIA, 0.5), "check_pass": 5.0}
FAMILIES: dict[str, tuple[str, ...]] = {"judge": CRITERIA, "check": ("check_pass",), "pairwise": ("pairwise_net",),
                                        "gen_tps": ("gen_tps",), "s_per_prompt": ("s_per_prompt",)}


def speed_tag(rec: CellRecord) -> str | None:
    """Where this cell's speed counts as measured (None: an old record without host tags)."""
    return measured_on(rec.host, rec.runtime) if rec.host and rec.runtime else None


def by_prompt(results: list[PromptResult], get: Getter, metric: str, tag: str | None) -> dict[str, list[float]]:
    """Per prompt, the metric's value for each repeat (ordered by repeat); speed measured elsewhere is NaN."""
    out: dict[str, list[float]] = defaultdict(list)
    for r in sorted(results, key=lambda r: (r.prompt_id, r.repeat)):
        ok = metric not in SPEED or comparable(r.generation, tag)
        out[r.prompt_id].append(get(r) if ok else math.nan)
    return out


def _ci_columns(rec: CellRecord, n_boot: int, level: float) -> dict[str, Any]:
    cols: dict[str, Any] = {"n_prompts": len({r.prompt_id for r in rec.results})}
    tag = speed_tag(rec)
    for name, get in MEANS.items():
        groups = list(by_prompt(rec.results, get, name, tag).values())
        _, cols[f"{name}_lo"], cols[f"{name}_hi"] = cluster_mean_ci(groups, n_boot, level)
    for name, get in RATIOS.items():
        sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for r in rec.results:
            if comparable(r.generation, tag):
                num, den = get(r)
                sums[r.prompt_id][0] += num
                sums[r.prompt_id][1] += den
        num, den = zip(*sums.values()) if sums else ((), ())
        _, cols[f"{name}_lo"], cols[f"{name}_hi"] = cluster_ratio_ci(num, den, n_boot, level)
    for metric in ("overall", "check_pass"):  # per category, over the category's prompts
        by_cat: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in rec.results:
            if not math.isnan(value := MEANS[metric](r)) or metric == "overall":
                by_cat[r.category][r.prompt_id].append(value)
        for cat, prompts in sorted(by_cat.items()):
            _, cols[f"{metric}_{cat}_lo"], cols[f"{metric}_{cat}_hi"] = cluster_mean_ci(list(prompts.values()),
                                                                                      n_boot, level)
            cols[f"{metric}_{cat}_n"] = len(prompts)
    cols.update(_pairwise_net(rec, n_boot, level))
    f = rec.fidelity
    z = NormalDist().inv_cdf((1 + level) / 2)
    enough = f is not None and f.n_chunks >= MIN_PROMPTS_FOR_CI and math.isfinite(f.kld_se)
    cols["kld_mean_lo"] = max(f.kld_mean - z * f.kld_se, 0.0) if enough else math.nan  # normal approx., KLD ≥ 0
    cols["kld_mean_hi"] = f.kld_mean + z * f.kld_se if enough else math.nan
    return cols


def _pairwise_net(rec: CellRecord, n_boot: int, level: float) -> dict[str, Any]:
    """Net preference over the baseline (win − loss, % of answers, per prompt): already a paired comparison,
    tested like a delta (d_pairwise_net*: sign-flip p, Holm within its family, detection limit)."""
    per_prompt = by_prompt(rec.results, _pairwise("net"), "pairwise_net", None)
    values = {pid: v for pid, v in per_prompt.items() if not all(math.isnan(x) for x in v)}
    if not values:
        return {}
    zeros = {pid: [0.0 if not math.isnan(x) else math.nan for x in v] for pid, v in values.items()}
    d = paired_prompt_delta(zeros, values, n_boot, level)
    return {"d_pairwise_net": d["delta"], "d_pairwise_net_lo": d["lo"], "d_pairwise_net_hi": d["hi"],
            "d_pairwise_net_p": d["p"], "d_pairwise_net_mdd": d["mdd"], "d_pairwise_net_n": d["n"]}


def _delta_columns(rec: CellRecord, base: CellRecord, n_boot: int, level: float) -> dict[str, Any]:
    shared = {answer_key(r) for r in rec.results} & {answer_key(r) for r in base.results}
    mine = [r for r in rec.results if answer_key(r) in shared]
    theirs = [r for r in base.results if answer_key(r) in shared]
    cols: dict[str, Any] = {}
    same_hardware = _fingerprint(rec) == _fingerprint(base)
    for name, get in DELTAS.items():
        if name in SPEED and not same_hardware:  # speed measured on other hardware: no comparison
            cols.update({f"d_{name}{s}": math.nan for s in ("", "_lo", "_hi", "_p", "_mdd")} | {f"d_{name}_n": 0})
            continue
        d = paired_prompt_delta(by_prompt(theirs, get, name, speed_tag(base)),
                                by_prompt(mine, get, name, speed_tag(rec)), n_boot, level)
        cols.update({f"d_{name}": d["delta"], f"d_{name}_lo": d["lo"], f"d_{name}_hi": d["hi"],
                     f"d_{name}_p": d["p"], f"d_{name}_mdd": d["mdd"], f"d_{name}_n": d["n"]})
        if name in TARGETS:
            cols[f"d_{name}_n_needed"] = prompts_needed(d["sd"], TARGETS[name])
    return cols


def _fingerprint(rec: CellRecord) -> str | None:
    return rec.host.fingerprint if rec.host else None


def significance(rows: list[dict[str, Any]], alpha: float) -> None:
    """d_m_sig: Holm-adjusted p ≤ alpha within each family, never below the smallest n that could reach it."""
    min_n = min_prompts_for_significance(alpha)
    for metrics in FAMILIES.values():
        cells = [(row, m) for row in rows for m in metrics if f"d_{m}_p" in row]
        adjusted = holm([row[f"d_{m}_p"] for row, m in cells])
        for (row, m), p_adj in zip(cells, adjusted):
            row[f"d_{m}_sig"] = None if math.isnan(p_adj) else bool(p_adj <= alpha and row[f"d_{m}_n"] >= min_n)


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
    significance(rows, 1.0 - level)
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
            for j in r.judgments:
                if j.scores is not None and j.winner is None:
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
