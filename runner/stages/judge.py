"""The judge stage: prompt results (+ optional reference answers) → JudgeItems → judgments on the results.

A sweep judges each cell as it runs (`judge.where: cell`), or every cell at the end in the submitting
process (`end`, runner/rejudge.py: `judge_deferred`); `replay rejudge` re-judges saved cells. All of them
go through `judge_cells`, which sends the items of all the cells it is given through one `judge_all`, so
`judge.concurrency` is one limit for all of them. The judgment cache key is made by the judge itself
(`OpenAIJudge.cache_payload`): only it knows what identifies its verdicts.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from typing import Any

from runner.identity import answer_key
from runner.judges.base import Judge, JudgeItem
from runner.records import CellRecord, Judgment, PromptResult
from runner.store import Store

BASELINE_NOT_SELF_GRADED = ("baseline cell: not graded against its own answers (judge.reference=baseline); "
                            "the other cells' scores are graded against this cell's answers")
JUDGED_AT_END = "not judged yet: judge.where=end judges every cell in the submitting process when the sweep ends"
WHERE = ("auto", "cell", "end")


@dataclass
class CellToJudge:
    record: CellRecord
    mode: str  # judge.reference: none | prompt | baseline
    is_baseline: bool
    baseline_answers: dict[tuple[str, int], str] | None = None


def judge_where(judge_cfg: Any, launcher_target: str) -> str:
    """`judge.where` resolved: `auto` judges at the end under a scheduler (Slurm), else in each cell."""
    where = str((judge_cfg or {}).get("where", "auto"))
    if where not in WHERE:
        raise ValueError(f"judge.where must be one of {', '.join(WHERE)}, got {where!r}")
    if where == "auto":
        return "end" if "SlurmLauncher" in launcher_target else "cell"
    return where


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


def judge_cells(judge: Judge | None, store: Store, cells: list[CellToJudge]) -> None:
    """Replace each cell's verdicts with `judge`'s (none when `judge` is None), all in one batch.

    With `mode == "baseline"` the baseline cell itself is not judged: graded against its own answers it
    would score as a perfect match and bias every delta against the other builds.
    """
    todo: list[tuple[CellToJudge, list[JudgeItem]]] = []
    for c in cells:
        rec = c.record
        rec.judge_reference, rec.judge_note, rec.judge_pending = (c.mode if judge else "none"), None, False
        for r in rec.results:
            r.judgments = []
        if judge is None or not rec.results:
            continue
        if c.mode == "baseline" and c.is_baseline:
            rec.judge_note = BASELINE_NOT_SELF_GRADED
            continue
        todo.append((c, judge_items(rec.results, c.mode, c.baseline_answers)))
    if judge is None or not todo:
        return
    items = [i for _, cell_items in todo for i in cell_items]
    verdicts = judge.judge_all([dataclasses.replace(i, repeat=k) for k in range(judge.repeats) for i in items], store)
    start = 0
    for c, cell_items in todo:
        for n, (r, item) in enumerate(zip(c.record.results, cell_items)):
            mine = verdicts[start + n::len(items)]
            for j in mine:
                j.answer_truncated = item.truncated
            r.judgments = mine
        start += len(cell_items)
        c.record.judge_note = failure_note([j for r in c.record.results for j in r.judgments])


def judge_cell(judge: Judge | None, store: Store, record: CellRecord, mode: str, is_baseline: bool,
               baseline_answers: dict[tuple[str, int], str] | None) -> None:
    judge_cells(judge, store, [CellToJudge(record, mode, is_baseline, baseline_answers)])


def failure_note(judgments: list[Judgment]) -> str | None:
    """'N of M judgments failed: <the most common error>', or None when none failed."""
    errors = [j.error or "unknown error" for j in judgments if j.scores is None]
    if not errors:
        return None
    error, _ = Counter(errors).most_common(1)[0]
    return f"{len(errors)} of {len(judgments)} judgments failed: {error}"
