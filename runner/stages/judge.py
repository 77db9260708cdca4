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
BASELINE_NOT_PAIRED = "baseline cell: judge.mode=pairwise compares every other build with this cell's answers"
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


def _pairs(results: list[PromptResult], baseline_answers: dict[tuple[str, int], str]) -> list[tuple[PromptResult, JudgeItem]]:
    """Pairwise: each answer against the baseline's, in both orders (runner/judges/pairwise.py)."""
    out = []
    for r, item in zip(results, judge_items(results, "none", None)):
        if (theirs := baseline_answers.get(answer_key(r))) is not None:
            out += [(r, dataclasses.replace(item, pair_answer=theirs, order=order)) for order in (0, 1)]
    return out


def judge_cells(judge: Judge | None, store: Store, cells: list[CellToJudge]) -> None:
    """Replace each cell's verdicts with `judge`'s (none when `judge` is None), all in one batch.

    The baseline cell itself is never judged against its own answers: with `judge.reference=baseline` it
    would score as a perfect match and bias every delta against the other builds, and pairwise judging
    compares the other builds with it.
    """
    todo: list[tuple[CellToJudge, list[tuple[PromptResult, JudgeItem]]]] = []
    pairwise = judge is not None and getattr(judge, "mode", "absolute") == "pairwise"
    for c in cells:
        rec = c.record
        rec.judge_reference, rec.judge_note, rec.judge_pending = (c.mode if judge else "none"), None, False
        for r in rec.results:
            r.judgments = []
        if judge is None or not rec.results:
            continue
        if c.is_baseline and (pairwise or c.mode == "baseline"):
            rec.judge_note = BASELINE_NOT_PAIRED if pairwise else BASELINE_NOT_SELF_GRADED
            continue
        if pairwise and not c.baseline_answers:
            rec.judge_note = "pairwise judging needs the baseline cell's answers, and there are none"
            continue
        pairs = _pairs(rec.results, c.baseline_answers) if pairwise else list(
            zip(rec.results, judge_items(rec.results, c.mode, c.baseline_answers)))
        todo.append((c, pairs))
    if judge is None or not todo:
        return
    pairs = [pair for _, cell_pairs in todo for pair in cell_pairs]
    verdicts = judge.judge_all([dataclasses.replace(i, repeat=k) for k in range(judge.repeats) for _, i in pairs],
                               store)
    for n, (r, item) in enumerate(pairs):  # a pairwise answer gets its first order's repeats, then its second's
        mine = verdicts[n::len(pairs)]
        for j in mine:
            j.answer_truncated = item.truncated
        r.judgments += mine
    for c, _ in todo:
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
