"""Statistics columns for the matrix: prompt-level CIs of per-cell means, paired deltas vs the baseline cell and
the verdict on each quality signal (runner/analysis/verdict.py).

Every interval is a seeded studentized bootstrap over prompts (all repeats and judge repeats of a prompt move
together), so re-collecting gives identical numbers; see runner/metrics/stats.py. Paired deltas (cell −
baseline) pair answers by (prompt id, repeat): repeat r of every cell used seed + r.

Column names, for a metric `m` of the matrix:
  m_lo, m_hi          95% CI of the cell's mean; empty below 5 prompts (kld_mean: mean ± t·SE from per-chunk
                      means, t for n_chunks − 1 degrees of freedom, empty below 3 chunks)
  n_prompts           prompts with an answer; overall_<category>_n: prompts of that category
  d_m, d_m_lo, d_m_hi mean per-prompt difference vs the baseline cell and its 95% CI
  d_m_p               p-value of "no difference", from the same bootstrap (≤ 0.05 exactly when the CI excludes 0)
  d_m_sig             the CI excludes 0 (per comparison, not adjusted: decisions use the verdict)
  d_m_mdd             detection limit: the smallest margin a build equal to the baseline would be shown not worse
                      by with 80% power (one-sided 2.5%, the verdict's test)
  d_m_verdict (+ _reason, _margin, _power, _n_needed)   the verdict on quality signals: runner/analysis/verdict.py
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from runner.analysis import verdict
from runner.host import measured_on
from runner.identity import answer_key, find_baseline
from runner.judges.aggregate import pairwise_value
from runner.judges.rubric import CRITERIA
from runner.metrics.paired import PairedDelta, paired_prompt_delta, summarize_differences
from runner.metrics.stats import LEVEL, N_BOOT, cluster_mean_ci, cluster_ratio_ci
from runner.records import CellRecord, PromptResult
from runner.speed import comparable, decode_tokens_and_seconds

ALPHA = 1.0 - LEVEL
MIN_CHUNKS_FOR_CI = 3
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
    """100 pass, 0 fail; NaN without a check or with a transient outcome (a timeout is no verdict on the answer)."""
    return 100.0 * r.check.passed if r.check is not None and not r.check.transient else math.nan


def _pairwise(what: str) -> Getter:
    return lambda r: pairwise_value(r, what)


# Per-answer values whose plain mean is the matrix column.
MEANS: dict[str, Getter] = {
    **{c: _score(c) for c in CRITERIA},
    "check_pass": _check_pass,
    **{m: _pairwise(m) for m in ("win_rate", "tie_rate", "loss_rate", "identical_rate", "position_inconsistency")},
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

# Per-answer values paired against the baseline cell.
DELTAS: dict[str, Getter] = {**{c: _score(c) for c in CRITERIA}, "check_pass": _check_pass,
                             "gen_tps": _answer_gen_tps, "s_per_prompt": MEANS["s_per_prompt"]}
DELTA_SUFFIXES = ("", "_lo", "_hi", "_p", "_sig", "_mdd", "_n")
# Signals whose per-answer value is a whole outcome (pass 100 / fail 0; win 100, tie 0, loss −100): their paired
# differences are wins, ties and losses of this many points, summarized by the score interval (runner/metrics/paired.py)
WHOLE_OUTCOME = {"check_pass": 100.0, "pairwise_net": 100.0}


def delta_columns(name: str, d: PairedDelta) -> dict[str, Any]:
    """d_<name>, _lo, _hi, _p, _sig, _mdd, _n of one paired delta."""
    return {f"d_{name}": d.delta, f"d_{name}_lo": d.lo, f"d_{name}_hi": d.hi, f"d_{name}_p": d.p,
            f"d_{name}_sig": None if math.isnan(d.p) else bool(d.p <= ALPHA), f"d_{name}_mdd": d.mdd(),
            f"d_{name}_n": d.n}


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
    f = rec.fidelity
    enough = f is not None and f.n_chunks >= MIN_CHUNKS_FOR_CI and math.isfinite(f.kld_se)
    t = sps.t.ppf((1 + level) / 2, f.n_chunks - 1) if enough else math.nan  # the SE is from n_chunks chunk means
    cols["kld_mean_lo"] = max(f.kld_mean - t * f.kld_se, 0.0) if enough else math.nan  # KLD ≥ 0
    cols["kld_mean_hi"] = f.kld_mean + t * f.kld_se if enough else math.nan
    return cols


def pairwise_net(rec: CellRecord, n_boot: int, level: float) -> PairedDelta | None:
    """Net preference over the baseline (win − loss, % of judged answers, per prompt): already a paired
    comparison, summarized like a delta. None: not judged pairwise."""
    per_prompt = by_prompt(rec.results, _pairwise("net"), "pairwise_net", None)
    values = [float(np.nanmean(v)) for v in per_prompt.values() if not all(math.isnan(x) for x in v)]
    return summarize_differences(values, WHOLE_OUTCOME["pairwise_net"], n_boot, level) if values else None


def _delta_columns(rec: CellRecord, base: CellRecord, n_boot: int,
                   level: float) -> tuple[dict[str, Any], dict[str, PairedDelta]]:
    shared = {answer_key(r) for r in rec.results} & {answer_key(r) for r in base.results}
    mine = [r for r in rec.results if answer_key(r) in shared]
    theirs = [r for r in base.results if answer_key(r) in shared]
    cols: dict[str, Any] = {}
    deltas: dict[str, PairedDelta] = {}
    same_hardware = _fingerprint(rec) == _fingerprint(base)
    for name, get in DELTAS.items():
        if name in SPEED and not same_hardware:  # speed measured on other hardware: no comparison
            cols.update({f"d_{name}{s}": math.nan for s in DELTA_SUFFIXES if s != "_n"} | {f"d_{name}_n": 0})
            continue
        deltas[name] = paired_prompt_delta(by_prompt(theirs, get, name, speed_tag(base)),
                                           by_prompt(mine, get, name, speed_tag(rec)), WHOLE_OUTCOME.get(name),
                                           n_boot, level)
        cols.update(delta_columns(name, deltas[name]))
    return cols, deltas


def _fingerprint(rec: CellRecord) -> str | None:
    return rec.host.fingerprint if rec.host else None


def stat_columns(records: list[CellRecord], baseline: str | None, n_boot: int = N_BOOT,
                 level: float = LEVEL) -> list[dict[str, Any]]:
    """Statistics columns per record (same order as `records`): CIs, deltas where a baseline cell exists, and the
    verdict on every quality signal the sweep measured. The baseline cell itself gets no deltas (0 by
    construction) and no verdict (it is what the others are judged against)."""
    signals = verdict.measured_signals(records)
    rows = []
    for rec in records:
        cols = _ci_columns(rec, n_boot, level)
        net = pairwise_net(rec, n_boot, level)
        if net is not None:
            cols.update(delta_columns("pairwise_net", net))
        base = find_baseline(rec, records, baseline) if rec.results else None
        deltas: dict[str, PairedDelta] = {"pairwise_net": net} if net is not None else {}
        if base is not None and base is not rec:
            more_cols, more = _delta_columns(rec, base, n_boot, level)
            cols.update(more_cols)
            deltas.update(more)
        if rec.status == "ok" and base is not rec:
            cols.update(verdict.verdict_columns(rec, base, deltas, signals, baseline))
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
