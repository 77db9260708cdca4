"""The check stage: every answer against its prompt's ground-truth check (runner/checks.py), no judge.

Definite results are cached by (check, answer): a re-run, and every cell that wrote the same answer, reuse them.
A transient one (a timeout, a kill by a signal, a sandbox that could not start) is recorded on the answer but
not cached: it says more about the machine at that moment than about the answer, so the next run recomputes it.

Checks run in parallel on half the cores (at least one): a `python_tests` check is a sandboxed interpreter that
keeps a core busy for up to its wall-clock timeout, and on a machine that is also running other cells (or a
judge) a full house of them would turn slow but correct answers into timeouts.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from runner.checks import run_checks
from runner.host import available_cpus
from runner.prompts import Prompt
from runner.records import CheckOutcome, PromptResult, from_dict
from runner.store import Store

CHECK_CODE_VERSION = 2  # bump when checking code changes what a check concludes (2: python_tests needs evidence)
KIND = "checks"  # store kind


def check_key(spec: Any, answer: str) -> dict[str, Any]:
    return {"code_version": CHECK_CODE_VERSION,
            "spec_sha": hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest(),
            "answer_sha": hashlib.sha256(answer.encode()).hexdigest()}


def _check(store: Store, spec: Any, answer: str) -> CheckOutcome:
    payload = check_key(spec, answer)
    if (hit := store.lookup(KIND, payload)) is not None:
        return from_dict(CheckOutcome, hit.manifest["record"])
    result = run_checks(spec, answer)
    outcome = CheckOutcome(passed=result.passed, detail=result.detail, transient=result.transient)
    if not outcome.transient:
        store.put_json(KIND, payload, {"passed": outcome.passed, "detail": outcome.detail})
    return outcome


def check_answers(store: Store, prompts: list[Prompt], results: list[PromptResult]) -> None:
    """Set `result.check` on every answer whose prompt has a check (thinking already stripped from `answer`)."""
    specs = {p.id: p.check for p in prompts if p.check is not None}
    todo = [r for r in results if r.prompt_id in specs]
    if not todo:
        return
    with ThreadPoolExecutor(max_workers=max(1, available_cpus() // 2)) as pool:
        outcomes = list(pool.map(lambda r: _check(store, specs[r.prompt_id], r.answer), todo))
    for r, outcome in zip(todo, outcomes):
        r.check = outcome
