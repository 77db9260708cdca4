"""Ground-truth checks inside a sweep: per-answer outcomes, matrix columns, deltas, the report, the cache."""

from __future__ import annotations

import time

import pandas as pd
import yaml

from conftest import FAST, run_runner, sweep_dirs
from runner.prompts import Prompt
from runner.records import CheckOutcome, Generation, PromptResult, read_cell_record
from runner.stages.check import KIND, check_answers, check_key
from runner.store import Store, hash_payload

ITEMS = [  # the tiny model writes noise: `any` passes on any answer, the others fail, each for its reason
    {"id": f"any{i}", "category": "loose", "prompt": f"Say something about {i}.", "check": {"type": "regex", "pattern": "."}}
    for i in range(4)
] + [
    {"id": "sum", "category": "math", "prompt": "What is 2 + 2? End with the number.",
     "check": {"type": "number", "value": 4}},
    {"id": "square", "category": "code", "prompt": "Write a Python function square(x).",
     "check": {"type": "python_tests", "tests": "assert square(3) == 9"}},
    {"id": "json", "category": "format", "prompt": "Reply with a JSON object with key a.",
     "check": {"type": "json_schema", "schema": {"type": "object", "required": ["a"]}}},
    {"id": "free", "category": "loose", "prompt": "Write a haiku."},  # no check
]


def test_checks_in_a_sweep(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"items": ITEMS}))
    args = ["-m", "format=gguf", "precision=fp16,q4_0", "prompts=file", f"prompts.file={suite}", *FAST,
            "fidelity.enabled=false"]
    proc = run_runner(args, tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    sweep = sweep_dirs(tmp_path)[0]
    rec = read_cell_record(sweep / "0" / "result.json")
    by_id = {r.prompt_id: r.check for r in rec.results}
    assert by_id["free"] is None and all(by_id[f"any{i}"].passed for i in range(4))
    assert not by_id["square"].passed and by_id["square"].detail == "no code block"
    assert not by_id["json"].passed and "JSON" in by_id["json"].detail
    df = pd.read_csv(sweep / "matrix.csv").set_index("precision")
    fp16 = df.loc["fp16"]
    assert fp16.checked == f"{sum(c.passed for c in by_id.values() if c)}/7"
    assert fp16.check_pass == 100 * sum(c.passed for c in by_id.values() if c) / 7
    assert fp16.check_pass_loose == 100 and fp16.check_pass_loose_n == 4 and fp16.check_pass_code == 0
    assert fp16.check_pass_lo <= fp16.check_pass <= fp16.check_pass_hi
    assert "d_check_pass" in df.columns and "d_check_pass_n_needed" in df.columns
    report = (sweep / "report.md").read_text()
    assert "## Checks per item" in report and "| square " in report and "✗ no code block" in report
    assert "Check pass %" in proc.stdout  # the answer at the end shows the check pass rate

    store = Store(tmp_path / "store")
    before = len(store.builds("checks"))
    specs = {item["id"]: item.get("check") for item in ITEMS}
    outcomes = {hash_payload(check_key(specs[r.prompt_id], r.answer)): r.check
                for job in ("0", "1") for r in read_cell_record(sweep / job / "result.json").results
                if r.check is not None}
    assert len(outcomes) <= 7 * 2 and not any(c.transient for c in outcomes.values())
    assert before == len(outcomes)  # one check per distinct (check, answer): both builds' identical answers share it
    assert run_runner(args, tmp_path).returncode == 0
    assert len(store.builds("checks")) == before  # a re-run re-checks nothing


def answer_to(prompt_id: str, answer: str) -> PromptResult:
    generation = Generation(text=answer, token_ids=[], prompt_tokens=1, completion_tokens=1, finish_reason="stop",
                            ttft_s=0.0, prompt_tps=0.0, gen_tps=0.0, wall_s=0.0)
    return PromptResult(prompt_id=prompt_id, category="code", repeat=0, prompt_text="", reference=None,
                        rendered_prompt="", prompt_token_ids_sha="", generation_key="", generation=generation,
                        answer=answer)


def test_transient_outcomes_are_rechecked_definite_ones_cached(tmp_path):
    """A timeout is recorded on the answer but not cached: the next run checks again (and takes the timeout
    again). A definite fail is cached: the next run reads it."""
    slow = {"type": "python_tests", "tests": "spin()", "timeout_s": 1}
    wrong = {"type": "python_tests", "tests": "assert add(1, 1) == 3"}
    prompts = [Prompt("slow", "code", "Write spin().", check=slow),
               Prompt("wrong", "code", "Write add().", check=wrong)]
    answers = {"slow": "```python\ndef spin():\n    while True:\n        pass\n```",
               "wrong": "```python\ndef add(a, b):\n    return a + b\n```"}
    store = Store(tmp_path / "store")
    runs = []
    for _ in range(2):
        results = [answer_to(p.id, answers[p.id]) for p in prompts]
        start = time.monotonic()
        check_answers(store, prompts, results)
        runs.append((time.monotonic() - start, {r.prompt_id: r.check for r in results}))
        assert runs[-1][1]["slow"] == CheckOutcome(False, "timeout after 1 s", transient=True)
        assert runs[-1][1]["wrong"] == CheckOutcome(False, "AssertionError (tests line 1: assert add(1, 1) == 3)")
        assert store.lookup(KIND, check_key(slow, answers["slow"])) is None
        assert store.lookup(KIND, check_key(wrong, answers["wrong"])) is not None
        assert len(store.builds("checks")) == 1  # the definite fail, built once
    assert runs[1][0] >= 1  # the second run waited for the timeout again: the slow check ran again
