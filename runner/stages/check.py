"""The check stage: every answer against its prompt's ground-truth check (runner/checks.py), no judge.

Results are cached by (check, answer): a re-run, and every cell that wrote the same answer, reuse them.
Checks run in parallel (a `python_tests` check is a sandboxed subprocess that may take its timeout).
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

CHECK_CODE_VERSION = 1  # bump when checking code changes what a check concludes
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
    outcome = CheckOutcome(passed=result.passed, detail=result.detail)
    store.put_json(KIND, payload, {"passed": outcome.passed, "detail": outcome.detail})
    return outcome


def check_answers(store: Store, prompts: list[Prompt], results: list[PromptResult]) -> None:
    """Set `result.check` on every answer whose prompt has a check (thinking already stripped from `answer`)."""
    specs = {p.id: p.check for p in prompts if p.check is not None}
    todo = [r for r in results if r.prompt_id in specs]
    if not todo:
        return
    with ThreadPoolExecutor(max_workers=max(1, available_cpus())) as pool:
        outcomes = list(pool.map(lambda r: _check(store, specs[r.prompt_id], r.answer), todo))
    for r, outcome in zip(todo, outcomes):
        r.check = outcome
