"""Ground-truth checks inside a sweep: per-answer outcomes, matrix columns, deltas, the report, the cache."""

from __future__ import annotations

import pandas as pd
import yaml

from conftest import FAST, run_runner, sweep_dirs
from runner.records import read_cell_record
from runner.store import Store

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
    assert before == 7 * 2 or before < 14  # identical answers of both builds share a cached outcome
    assert run_runner(args, tmp_path).returncode == 0
    assert len(store.builds("checks")) == before  # a re-run re-checks nothing
