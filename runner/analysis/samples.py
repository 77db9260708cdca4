"""One row per answer of a sweep — (cell, prompt, repeat) — written beside the matrix as samples.csv and
samples.jsonl, and read by the report's answer view. Built from the records alone, like the matrix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from runner.identity import answer_key, build_id, find_baseline
from runner.judges.aggregate import pairwise_outcomes
from runner.judges.rubric import CRITERIA
from runner.analysis.matrix_stats import MEANS
from runner.metrics.fidelity import answer_agreement
from runner.records import CellRecord, PromptResult

# Column order of samples.csv; README "samples.csv columns" documents each.
COLUMNS = [
    "job", "build", "model", "format", "precision", "generation", "prompts", "judge", "is_baseline",
    "prompt_id", "category", "repeat", "prompt", "reference", "answer", "finish_reason", "truncated",
    "prompt_tokens", "completion_tokens", "thinking_tokens", "ttft_s", "gen_tps", "wall_s", "cached",
    *CRITERIA, "judged", "judge_reasoning", "judge_error",
    "pairwise_outcome", "pairwise_inconsistent", "pairwise_identical", "pairwise_reasoning",
    "check_passed", "check_detail", "same_as_baseline", "similarity_to_baseline", "baseline_job", "baseline_answer",
]


def _judge(r: PromptResult) -> dict[str, Any]:
    absolute = [j for j in r.judgments if j.order is None]
    valid = [j for j in absolute if j.scores is not None]
    out: dict[str, Any] = {c: MEANS[c](r) for c in CRITERIA}  # the mean over judge repeats, as in the matrix
    out["judged"] = f"{len(valid)}/{len(absolute)}" if absolute else None
    out["judge_reasoning"] = _joined([j.reasoning for j in valid])
    out["judge_error"] = _joined([j.error for j in r.judgments if j.error])
    outcomes = pairwise_outcomes(r)
    if outcomes:
        out["pairwise_outcome"] = ", ".join(o for o, _, _ in outcomes)
        out["pairwise_inconsistent"] = any(bad for _, bad, _ in outcomes)
        out["pairwise_identical"] = any(same for _, _, same in outcomes)
    paired = sorted((j for j in r.judgments if j.order is not None and j.scores is not None), key=lambda j: j.order)
    out["pairwise_reasoning"] = _joined([f"[{'baseline' if j.order == 0 else 'build'} first → {j.winner}] "
                                         f"{j.reasoning or ''}" for j in paired])
    return out


def _joined(texts: list[str | None]) -> str | None:
    texts = [t for t in texts if t]
    if len(texts) > 1:
        return "\n\n".join(f"[{i + 1}] {t}" for i, t in enumerate(texts))
    return texts[0] if texts else None


def sample_rows(records: list[CellRecord], labels: dict[int | None, str], baseline: str | None) -> pd.DataFrame:
    """Every answer of every record that has answers; `labels` maps job number → the report's build label."""
    rows = []
    for rec in sorted(records, key=lambda r: (r.cell.job_num is None, r.cell.job_num or 0)):
        if not rec.results:
            continue
        c = rec.cell
        is_base = build_id(c.format, c.precision, c.method) == baseline
        base = None if is_base else find_baseline(rec, records, baseline)
        base_answers = {answer_key(r): r for r in base.results} if base else {}
        for r in sorted(rec.results, key=lambda r: (r.prompt_id, r.repeat)):
            g = r.generation
            ref = base_answers.get(answer_key(r))
            agreement = r.agreement or (answer_agreement(ref.generation.token_ids, g.token_ids) if ref else None)
            rows.append({
                "job": c.job_num, "build": labels.get(c.job_num, build_id(c.format, c.precision, c.method)),
                "model": c.model, "format": c.format, "precision": c.precision, "generation": c.generation,
                "prompts": c.prompts, "judge": c.judge, "is_baseline": is_base,
                "prompt_id": r.prompt_id, "category": r.category, "repeat": r.repeat, "prompt": r.prompt_text,
                "reference": r.reference, "answer": r.answer, "finish_reason": g.finish_reason,
                "truncated": g.finish_reason == "length", "prompt_tokens": g.prompt_tokens,
                "completion_tokens": g.completion_tokens, "thinking_tokens": r.thinking_tokens,
                "ttft_s": g.ttft_s, "gen_tps": g.gen_tps, "wall_s": g.wall_s, "cached": r.cache_hit,
                **_judge(r),
                "check_passed": r.check.passed if r.check else None, "check_detail": r.check.detail if r.check else None,
                "same_as_baseline": bool(agreement["exact"]) if agreement else None,
                "similarity_to_baseline": agreement["token_similarity"] if agreement else None,
                "baseline_job": base.cell.job_num if base else None,
                "baseline_answer": ref.answer if ref else None,
            })
    return pd.DataFrame(rows, columns=COLUMNS)


def write_samples(samples: pd.DataFrame, out_dir: Path) -> None:
    """samples.csv (pandas: `pd.read_csv(path)`) and samples.jsonl (one JSON object per answer)."""
    samples.to_csv(Path(out_dir) / "samples.csv", index=False)
    samples.to_json(Path(out_dir) / "samples.jsonl", orient="records", lines=True, force_ascii=False)
