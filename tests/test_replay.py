"""Replay of a finished tiny-model sweep: reproduce (cached and fresh), rejudge, collect elsewhere, bad input."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, run_runner, sweep_dirs
from runner.records import read_cell_record
from runner.analysis.collect import main as collect_main
from runner.replay import main
from runner.testing.fault_server import FaultServerProcess

SMALL = ["generation.max_tokens=8", "fidelity.chunk_len=64", "fidelity.tokens=128", "quiet=true"]
FIDELITY_SPEED = ["kld_mean", "top1_pct", "ppl", "answer_agreement", "answer_similarity", "gen_tps", "gen_tps_lo",
                  "s_per_prompt", "size_gb"]
JUDGE = ["overall", "accuracy", "coherence", "relevance", "overall_lo", "d_overall"]


@pytest.fixture(scope="module")
def judge_server():
    with FaultServerProcess(fault_rate=0.0) as server:
        yield server


@pytest.fixture(scope="module", autouse=True)
def judge_key():
    """The judge key comes from the environment, for the sweep and for every replay of it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENAI_API_KEY", "sk-test")
        yield


@pytest.fixture(scope="module")
def sweep(judge_server, tmp_path_factory) -> Path:
    """gguf × {fp16, q4_0} + mlx fp16 (+ the skipped mlx × q4_0), judged against the baseline's answers."""
    root = tmp_path_factory.mktemp("sweep")
    judge = ["judge=openai", f"judge.base_url={judge_server.base_url}", "judge.reference=baseline"]
    proc = run_runner(["-m", "format=gguf,mlx", "precision=fp16,q4_0", *judge, *SMALL], root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = sweep_dirs(root)
    return path


def store_builds(sweep_dir: Path, kind: str) -> list[dict]:
    log = sweep_dir.parent.parent / "store" / "builds.jsonl"
    return [row for row in map(json.loads, log.read_text().splitlines()) if row["kind"] == kind]


def records(sweep_dir: Path) -> dict[int, object]:
    return {int(d.name): read_cell_record(d / "result.json") for d in sweep_dir.iterdir() if d.name.isdigit()}


def matrix(sweep_dir: Path) -> pd.DataFrame:
    return pd.read_csv(sweep_dir / "matrix.csv").set_index("job").sort_index()


def fidelity_scores(rec) -> tuple | None:
    f = rec.fidelity
    return f and (f.n_tokens, f.kld_mean, f.kld_p99, f.top1_pct, f.ppl, f.dppl, f.text_sha)


def assert_same_generations_and_scores(old: dict, new: dict, judged: bool = True) -> None:
    assert old.keys() == new.keys()
    for job, rec in old.items():
        assert new[job].status == rec.status
        assert [r.generation.token_ids for r in new[job].results] == [r.generation.token_ids for r in rec.results]
        assert fidelity_scores(new[job]) == fidelity_scores(rec)
        if judged:
            def scores(results):
                return [[j.scores for j in r.judgments] for r in results]
            assert scores(new[job].results) == scores(rec.results)


def test_reproduce_regenerates_by_default_and_gets_identical_results(sweep, tmp_path, capsys):
    out = tmp_path / "again"
    builds_before = len(store_builds(sweep, "generations"))
    baselines_before = len(store_builds(sweep, "fidelity-baseline"))
    assert main(["reproduce", str(sweep), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "greedy generations identical (7/7)" in printed and "nothing re-run" not in printed
    assert_same_generations_and_scores(records(sweep), records(out))
    assert (matrix(out).loc[matrix(out)["status"] == "ok", "generations_cached"] == 0).all()  # re-run, not replayed
    assert len(store_builds(sweep, "generations")) > builds_before
    assert len(store_builds(sweep, "fidelity-baseline")) == baselines_before + 1  # the baseline's log-probs too
    assert (out / "reproduce.md").exists() and (out / "report.md").exists()
    assert "Answers regenerated and fidelity recomputed." in (out / "reproduce.md").read_text()
    overrides = Path("0", ".hydra", "overrides.yaml")
    assert (out / overrides).read_text() == (sweep / overrides).read_text()


def test_reproduce_from_cache_says_nothing_was_re_run(sweep, tmp_path, capsys):
    out = tmp_path / "cached"
    assert main(["reproduce", str(sweep), "--from-cache", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "reproduced from the caches, nothing re-run" in printed
    assert "speed not re-measured (all generations from the cache)" in printed
    ok = matrix(out)["status"] == "ok"
    assert (matrix(out).loc[ok, "generations_cached"] == matrix(out).loc[ok, "n_answers"]).all()
    assert_same_generations_and_scores(records(sweep), records(out))


def test_reproduce_fresh_bypasses_the_caches(sweep, tmp_path, capsys):
    out = tmp_path / "fresh"
    assert main(["reproduce", str(sweep), "--fresh", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "gen tok/s" in printed and "reproduced: 4 cells" in printed
    assert (out / "store" / "builds.jsonl").exists()  # everything was rebuilt in a new store
    assert (matrix(out)["generations_cached"] == 0).all()
    # a re-asked judge may answer differently (this fake one does): generations and fidelity must not
    assert_same_generations_and_scores(records(sweep), records(out), judged=False)


def test_reproduce_counts_answers_regenerated_earlier_in_the_same_run_as_regenerated(tmp_path, capsys):
    """mlx fp16 runs first and regenerates the gguf fp16 baseline's answers; the baseline's own cell then finds
    them in the store, yet they were made by this reproduce: regenerated, and their speed compared."""
    proc = run_runner(["-m", "format=mlx,gguf", "precision=fp16", *SMALL], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = sweep_dirs(tmp_path)
    out = tmp_path / "again"
    assert main(["reproduce", str(sweep), "--out", str(out), "--quiet"]) == 0
    (baseline_line,) = [line for line in capsys.readouterr().out.splitlines() if "gguf fp16" in line]
    assert "speed not re-measured" not in baseline_line and "gen tok/s" in baseline_line, baseline_line
    assert (matrix(out)["generations_cached"] == 0).all()
    again = tmp_path / "from-cache"  # a replay of the caches still says so
    assert main(["reproduce", str(sweep), "--from-cache", "--out", str(again), "--quiet"]) == 0
    assert (matrix(again)["generations_cached"] == matrix(again)["n_answers"]).all()


def test_a_cell_that_was_ok_and_now_fails_is_a_failure(sweep, tmp_path, capsys):
    broken = shutil.copytree(sweep, tmp_path / "broken", ignore=shutil.ignore_patterns("rejudge-*"))
    config = broken / "1" / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("max_tokens: 8", "max_tokens: 0"))
    assert main(["reproduce", str(broken), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    printed = capsys.readouterr().out
    assert "✗ #1 gguf q4_0: – — differs: status ok → failed" in printed and "NOT reproduced" in printed


def test_rejudge_with_no_judge_empties_judge_columns_only(sweep):
    assert main(["rejudge", str(sweep), "judge=none"]) == 0
    old, new = matrix(sweep), matrix(sweep / "rejudge-none")
    assert old.loc[(old["status"] == "ok") & (old.index != 0), "overall"].notna().all()  # 0: the baseline
    assert new[JUDGE].isna().all().all() and (new["judge"] == "none").all()
    pd.testing.assert_frame_equal(old[FIDELITY_SPEED], new[FIDELITY_SPEED])
    rec = read_cell_record(sweep / "rejudge-none" / "1" / "result.json")
    assert all(r.judgments == [] for r in rec.results) and "judge=none" in rec.cell.overrides
    assert (sweep / "rejudge-none" / "report.md").exists()


def test_rejudge_with_another_rubric_setting(sweep):
    assert main(["rejudge", str(sweep), "judge.reference=prompt"]) == 0  # the server from the sweep's own config
    out = sweep / "rejudge-openai"
    new = matrix(out)
    assert (new.loc[new["status"] == "ok", "judged"] == "7/7").all()
    overrides = (out / "0" / ".hydra" / "overrides.yaml").read_text()
    assert "judge.reference=prompt" in overrides and "judge.reference=baseline" not in overrides
    assert "judge.base_url" in overrides


def test_rejudge_drops_every_old_verdict_including_judge_repeats(sweep, tmp_path):
    repeated, none = tmp_path / "repeated", tmp_path / "none"
    assert main(["rejudge", str(sweep), "judge.repeats=2", "--out", str(repeated)]) == 0
    assert all(len(r.judgments) == 2 for r in read_cell_record(repeated / "1" / "result.json").results)
    assert main(["rejudge", str(repeated), "judge=none", "--out", str(none)]) == 0
    rec = read_cell_record(none / "1" / "result.json")
    assert all(r.judgments == [] for r in rec.results)


def test_rejudge_against_the_baseline_needs_the_baseline_cell(sweep, tmp_path, capsys):
    copy = shutil.copytree(sweep, tmp_path / "no-baseline", ignore=shutil.ignore_patterns("rejudge-*"))
    result = copy / "0" / "result.json"
    data = json.loads(result.read_text())
    result.write_text(json.dumps({**data, "status": "failed", "reason": "boom"}))
    assert main(["rejudge", str(copy), "judge.reference=baseline"]) == 2
    assert "judge.mode=pairwise: the sweep has no ok gguf_fp16 cell" in capsys.readouterr().err


def test_collect_a_copy_elsewhere_without_engines(sweep, tmp_path):
    copy = shutil.copytree(sweep, tmp_path / "elsewhere" / "sweep", ignore=shutil.ignore_patterns("rejudge-*"))
    for name in ("matrix.csv", "matrix.md", "report.md", "report.html", "pareto.png"):
        (copy / name).unlink()
    code = ("import sys; from runner.analysis.collect import main; rc = main([sys.argv[1]]); "
            "assert not {'mlx', 'llama_cpp'} & {m.split('.')[0] for m in sys.modules}, 'an engine was imported'; "
            "sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(copy)], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (copy / "matrix.csv").read_text() == (sweep / "matrix.csv").read_text()


def test_report_and_statistics_of_the_real_sweep(sweep):
    md = (sweep / "report.md").read_text()
    for title in ("## Overview", "## Quality (judge)", "## Fidelity", "## Speed", "## Size", "## Per category",
                  "## Fairness", "## Skipped cells"):
        assert title in md
    assert "✅ All 3 ok cells of `tiny` share one generation contract" in md
    assert "Cross-engine noise floor: **mlx fp16**" in md and "mlx q4_0" in md
    assert "data:image/png;base64," in (sweep / "report.html").read_text()
    assert (sweep / "pareto.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    m = matrix(sweep)
    ok = m[m["status"] == "ok"]
    graded = ok.drop(index=0)  # job 0 is the baseline: with judge.reference=baseline it is not graded by itself
    assert math.isnan(m.loc[0, "overall"]) and "not graded against its own answers" in m.loc[0, "judge_note"]
    assert (graded["overall_lo"] <= graded["overall"]).all() and (graded["overall"] <= graded["overall_hi"]).all()
    assert (ok["gen_tps_lo"] <= ok["gen_tps"]).all() and (ok["gen_tps"] <= ok["gen_tps_hi"]).all()
    assert math.isnan(m.loc[1, "d_overall"]) and not math.isnan(m.loc[1, "d_gen_tps"])  # no baseline score to pair
    assert "**The baseline is not graded against itself**" in md


def test_bad_sweep_dirs_give_one_clear_error(sweep, tmp_path, capsys):
    assert collect_main([str(tmp_path)]) == 2
    assert "not a sweep or run dir (no multirun.yaml, numbered job dirs or result.json)" in capsys.readouterr().err
    (tmp_path / "0").mkdir()
    assert main(["rejudge", str(tmp_path), "judge=none"]) == 2
    assert "not a sweep dir (no multirun.yaml)" in capsys.readouterr().err

    missing = shutil.copytree(sweep, tmp_path / "missing", ignore=shutil.ignore_patterns("rejudge-*"))
    shutil.rmtree(missing / "1")
    shutil.rmtree(missing / "3")
    assert main(["reproduce", str(missing), "--quiet"]) == 2
    assert "missing job dirs 1, 3 (multirun.yaml describes 4 jobs)" in capsys.readouterr().err

    old = shutil.copytree(sweep, tmp_path / "old", ignore=shutil.ignore_patterns("rejudge-*"))
    result = old / "2" / "result.json"
    result.write_text(result.read_text().replace('"schema_version": 2', '"schema_version": 0'))
    assert main(["rejudge", str(old), "judge=none"]) == 2
    assert f"{result}: record schema_version 0" in capsys.readouterr().err


def test_partial_sweep_collects_and_lists_the_failure(sweep, tmp_path):
    partial = shutil.copytree(sweep, tmp_path / "partial", ignore=shutil.ignore_patterns("rejudge-*"))
    (partial / "2" / "result.json").unlink()  # a job killed before it wrote its record
    assert collect_main([str(partial)]) == 0
    failed = (partial / "report.md").read_text().split("## Failed cells")[1].split("##")[0]
    assert "mlx fp16" in failed and "no result.json: the job did not finish" in failed
