"""The judge stage: prompt results (+ optional references) → JudgeItems → judgments on the results."""

from __future__ import annotations

from runner.judges.base import REFERENCE_MODES, Judge, JudgeItem
from runner.records import PromptResult
from runner.store import Store


def judge_items(results: list[PromptResult], mode: str,
                baseline_answers: dict[tuple[str, int], str] | None) -> list[JudgeItem]:
    """What the judge sees: prompt, category, answer (thinking stripped), truncation flag and a reference.

    Never the format or precision: a judge must not know which build wrote the answer.
    """
    if mode not in REFERENCE_MODES:
        raise ValueError(f"judge.reference={mode!r}: expected one of {', '.join(REFERENCE_MODES)}")
    items = []
    for r in results:
        ref = None
        if mode == "prompt":
            ref = r.reference
        elif mode == "baseline" and baseline_answers:
            ref = baseline_answers.get((r.prompt_id, r.repeat))
        items.append(JudgeItem(prompt=r.prompt_text, category=r.category, answer=r.answer,
                               truncated=r.generation.finish_reason == "length", reference=ref,
                               generation_key=r.generation_key))
    return items


def apply_judge(judge: Judge, store: Store, results: list[PromptResult], mode: str,
                baseline_answers: dict[tuple[str, int], str] | None) -> None:
    """Judge every result in place (`result.judgment`); per-item failures are recorded, not raised."""
    items = judge_items(results, mode, baseline_answers)
    for r, item, j in zip(results, items, judge.judge_all(items, store)):
        j.answer_truncated = item.truncated
        r.judgment = j
