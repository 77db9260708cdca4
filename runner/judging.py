"""The judge stage: prompt results (+ optional references) → JudgeItems → judgments on the results."""

from __future__ import annotations

import dataclasses

from runner.judges.base import Judge, JudgeItem
from runner.records import Judgment, PromptResult
from runner.store import Store


def judge_items(results: list[PromptResult], mode: str,
                baseline_answers: dict[tuple[str, int], str] | None) -> list[JudgeItem]:
    """What the judge sees: prompt, category, answer (thinking stripped), truncation flag and a reference.

    Never the format or precision: a judge must not know which build wrote the answer.
    """
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
    repeats = [[dataclasses.replace(i, repeat=k) for i in items] for k in range(judge.repeats)]
    verdicts = judge.judge_all([i for batch in repeats for i in batch], store)
    for n, (r, item) in enumerate(zip(results, items)):
        mine = verdicts[n::len(items)]
        for j in mine:
            j.answer_truncated = item.truncated
        r.judgment, r.judge_repeats = mine[0], mine[1:]


def all_judgments(result: PromptResult) -> list[Judgment]:
    """Every verdict on one answer (one per judge repeat); empty when it was not judged."""
    return [] if result.judgment is None else [result.judgment, *result.judge_repeats]
