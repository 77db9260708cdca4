"""The answer view: samples.csv / samples.jsonl and the answers section of report.html, driven in a real
browser (Playwright + Debian's chromium) on a real tiny sweep judged by the fault-injecting server.

Without a browser the browser test skips with the reason; REQUIRE_BROWSER=1 (set by .ci/run) makes that a
failure. ANSWER_VIEW_SCREENSHOT=path also saves the screenshot there (the README's comes from
benchmarks/answer_view.py).
"""

from __future__ import annotations

import json
import math
import os
import shutil

import pandas as pd
import pytest
import yaml

from conftest import REPO, run_runner, sweep_dirs
from runner.analysis.answer_view import word_diff
from runner.analysis.collect import collect
from runner.judges.rubric import CRITERIA
from runner.records import read_cell_record
from runner.analysis.samples import COLUMNS
from runner.testing.fault_server import FaultServerProcess

ATTACK = "<script>window.__pwned = 1</script><img src=x onerror=\"window.__pwned = 2\">"


@pytest.fixture(scope="module")
def judged_sweep(tmp_path_factory):
    """gguf fp16 (baseline), gguf q4_0, mlx fp16, mlx 4bit on the seed prompts, each with a check; judged by
    the fault server, 30 % of whose replies fail (recorded failures, never scores)."""
    root = tmp_path_factory.mktemp("answers")
    items = yaml.safe_load((REPO / "conf/prompts/seed.yaml").read_text())["items"]
    for i, item in enumerate(items):  # a check that some answers pass and some fail
        item["check"] = {"type": "regex", "pattern": r"\w"} if i % 2 else {"type": "number", "value": 42}
    suite = root / "suite.yaml"
    suite.write_text(yaml.safe_dump(items))
    with FaultServerProcess(fault_rate=0.3, faults="500", seed=5) as server:
        proc = run_runner(["-m", "format=gguf,mlx", "precision=fp16,q4_0,4bit", "prompts=file", f"prompts.file={suite}",
                           "generation.max_tokens=24", "fidelity.enabled=false", "quiet=true", "judge=openai",
                           f"judge.base_url={server.base_url}", "judge.max_retries=0"],
                          root, env={"OPENAI_API_KEY": "sk-test"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return sweep_dirs(root)[0]


def test_samples_hold_one_row_per_answer_with_what_the_records_say(judged_sweep):
    samples = pd.read_csv(judged_sweep / "samples.csv", keep_default_na=False, na_values=[""])
    lines = [json.loads(line) for line in (judged_sweep / "samples.jsonl").read_text().splitlines()]
    records = {r.cell.job_num: r for r in map(read_cell_record, judged_sweep.glob("*/result.json"))}
    ok = [r for r in records.values() if r.status == "ok"]
    assert list(samples.columns) == COLUMNS and len(samples) == len(lines) == sum(len(r.results) for r in ok) == 28
    base_job = next(j for j, r in records.items() if (r.cell.format, r.cell.precision) == ("gguf", "fp16"))
    failures = 0
    for row in lines:
        rec = records[row["job"]]
        (r,) = [r for r in rec.results if (r.prompt_id, r.repeat) == (row["prompt_id"], row["repeat"])]
        assert row["answer"] == r.answer and row["completion_tokens"] == r.generation.completion_tokens
        assert row["truncated"] == (r.generation.finish_reason == "length")
        assert row["check_passed"] == r.check.passed and row["check_detail"] == r.check.detail
        valid = [j for j in r.judgments if j.scores is not None]
        for c in CRITERIA:
            expected = sum(j.scores[c] for j in valid) / len(valid) if valid else None
            assert row[c] == expected or (expected is None and row[c] is None)
        failures += not valid
        assert (row["judge_error"] is not None) == (not valid)
        if row["is_baseline"]:
            assert row["job"] == base_job and row["same_as_baseline"] is None and row["baseline_answer"] is None
        else:
            (b,) = [b for b in records[base_job].results if b.prompt_id == r.prompt_id and b.repeat == r.repeat]
            assert row["baseline_job"] == base_job and row["baseline_answer"] == b.answer
            assert row["same_as_baseline"] == (b.generation.token_ids == r.generation.token_ids)
    assert failures > 0  # the fault server failed some judgments: they are errors with reasons, not scores
    assert samples["same_as_baseline"].eq(False).any()  # builds do answer differently somewhere


def test_word_diff_marks_added_and_dropped_words_and_escapes():
    assert word_diff("the cat sat", "the dog sat") == "the <del>cat</del><ins>dog</ins> sat"
    out = word_diff("a", "a <b>")
    assert "<b>" not in out and "&lt;b&gt;" in out


def test_answers_and_reasoning_are_escaped_in_the_report(judged_sweep, tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(judged_sweep, copy)
    path = next(p for p in copy.glob("*/result.json") if read_cell_record(p).status == "ok")
    data = json.loads(path.read_text())
    data["results"][0]["answer"] = ATTACK
    for j in data["results"][0]["judgments"]:
        j["reasoning"] = ATTACK
    data["results"][0]["prompt_id"] = "p<script>"
    path.write_text(json.dumps(data))
    collect(copy)
    page = (copy / "report.html").read_text()
    assert ATTACK not in page and "<script>window.__pwned" not in page and "&lt;script&gt;window.__pwned" in page
    assert page.count("<script>") == 1  # the report's own script, nothing from a record


def _browser_path() -> str:
    reason = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "playwright is not installed (pip install -e '.[test]')"
    exe = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if reason is None and exe is None:
        reason = "no chromium on PATH (apt-get install chromium, or CHROMIUM=/path/to/chrome)"
    if reason:
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return exe


def _visible_rows(page) -> list[dict[str, str]]:
    return page.evaluate("""() => Array.from(document.querySelectorAll('tr.av-row'))
        .filter(r => r.offsetParent !== null)
        .map(r => ({...r.dataset, category: r.closest('.av-prompt').dataset.category}))""")


def test_filters_and_sorting_in_a_real_browser(judged_sweep, tmp_path):
    exe = _browser_path()
    from playwright.sync_api import sync_playwright

    samples = pd.read_json(judged_sweep / "samples.jsonl", lines=True)
    builds = samples[~samples["is_baseline"]]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto((judged_sweep / "report.html").as_uri())
        assert len(_visible_rows(page)) == len(samples)
        assert page.inner_text("#av-count") == f"{samples['prompt_id'].nunique()} prompts, {len(samples)} answers shown"

        page.select_option("#av-build", "gguf q4_0")
        rows = _visible_rows(page)
        expected = builds[builds["build"] == "gguf q4_0"]
        assert {r["build"] for r in rows} == {"gguf q4_0", "gguf fp16"}  # the build, and its baseline for reference
        assert sum(r["build"] == "gguf q4_0" for r in rows) == len(expected)

        page.select_option("#av-build", "")
        page.check("#av-differs")
        rows = _visible_rows(page)
        differing = builds[builds["same_as_baseline"] == False]  # noqa: E712
        assert sorted((r["build"], r["category"]) for r in rows if r["baseline"] == "0") == \
            sorted(zip(differing["build"], differing["category"]))
        assert f"{len(differing)} answers shown" in page.inner_text("#av-count")
        page.screenshot(path=str(tmp_path / "answers.png"))
        if target := os.environ.get("ANSWER_VIEW_SCREENSHOT"):
            page.screenshot(path=target)

        page.uncheck("#av-differs")
        category = sorted(samples["category"])[0]
        page.select_option("#av-category", category)
        page.check("#av-problems")
        page.fill("#av-low", "3")
        problems = samples[(samples["category"] == category) & ((samples["check_passed"] == False)  # noqa: E712
                                                                 | (samples["overall"] <= 3))]
        shown = _visible_rows(page)
        assert all(r["category"] == category for r in shown)
        assert sum(r["check"] == "0" or (r["overall"] != "" and float(r["overall"]) <= 3) for r in shown) == len(problems)
        assert f"{len(problems)} answers shown" in page.inner_text("#av-count")

        # sorting by a column: the first prompt table by judge overall, ascending then descending
        page.select_option("#av-category", "")
        page.uncheck("#av-problems")
        table = page.locator("table.av-table").first
        header = table.locator("th", has_text="Judge overall")
        values = []
        for _ in range(2):
            header.click()
            cells = table.locator("tbody tr td:nth-child(5)").evaluate_all("tds => tds.map(td => td.dataset.sort)")
            values.append([float(v) for v in cells if v])
        assert values[0] == sorted(values[0]) and values[1] == sorted(values[1], reverse=True) and values[0]
        assert not page.evaluate("window.__pwned || 0")
        browser.close()
    assert (tmp_path / "answers.png").stat().st_size > 10_000
    assert not math.isnan(samples["overall"].max())
