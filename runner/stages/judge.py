"""The judge stage: prompt results (+ optional reference answers) → JudgeItems → judgments on the results.

Sweeps and `replay rejudge` both judge a cell through `judge_cell`. The judgment cache key is made by the
judge itself (`OpenAIJudge.cache_payload`): only it knows what identifies its verdicts.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from runner.identity import answer_key
from runner.judges.base import Judge, JudgeItem
from runner.records import CellRecord, Judgment, PromptResult
from runner.store import Store

BASELINE_NOT_SELF_GRADED = ("baseline cell: not graded against its own answers (judge.reference=baseline); "
                            "the other cells' scores are graded against this cell's answers")


def judge_items(results: list[PromptResult], mode: str,
                baseline_answers: dict[tuple[str, int], str] | None) -> list[JudgeItem]:
    """What the judge sees: prompt, category, answer (thinking stripped), truncation flag and a reference answer.

    Never the format or precision: a judge must not know which build wrote the answer.
    """
    items = []
    for r in results:
        ref = None
        if mode == "prompt":
            ref = r.reference
        elif mode == "baseline" and baseline_answers:
            ref = baseline_answers.get(answer_key(r))
        items.append(JudgeItem(prompt=r.prompt_text, category=r.category, answer=r.answer,
                               truncated=r.generation.finish_reason == "length", reference=ref,
                               generation_key=r.generation_key))
    return items


def apply_judge(judge: Judge, store: Store, results: list[PromptResult], mode: str,
                baseline_answers: dict[tuple[str, int], str] | None) -> None:
    """Judge every result in place (`result.judgments`, one per judge repeat); failures are recorded, not raised."""
    items = judge_items(results, mode, baseline_answers)
    repeats = [[dataclasses.replace(i, repeat=k) for i in items] for k in range(judge.repeats)]
    verdicts = judge.judge_all([i for batch in repeats for i in batch], store)
    for n, (r, item) in enumerate(zip(results, items)):
        mine = verdicts[n::len(items)]
        for j in mine:
            j.answer_truncated = item.truncated
        r.judgments = mine


def judge_cell(judge: Judge | None, store: Store, record: CellRecord, mode: str, is_baseline: bool,
               baseline_answers: dict[tuple[str, int], str] | None) -> None:
    """Replace the cell's verdicts with `judge`'s (none when `judge` is None).

    With `mode == "baseline"` the baseline cell itself is not judged: graded against its own answers it
    would score as a perfect match and bias every delta against the other builds.
    """
    record.judge_reference = mode if judge is not None else "none"
    record.judge_note = None
    for r in record.results:
        r.judgments = []
    if judge is None or not record.results:
        return
    if mode == "baseline" and is_baseline:
        record.judge_note = BASELINE_NOT_SELF_GRADED
        return
    apply_judge(judge, store, record.results, mode, baseline_answers)
    record.judge_note = failure_note([j for r in record.results for j in r.judgments])


def failure_note(judgments: list[Judgment]) -> str | None:
    """'N of M judgments failed: <the most common error>', or None when none failed."""
    errors = [j.error or "unknown error" for j in judgments if j.scores is None]
    if not errors:
        return None
    error, _ = Counter(errors).most_common(1)[0]
    return f"{len(errors)} of {len(judgments)} judgments failed: {error}"
