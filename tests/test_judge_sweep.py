"""The judge stage inside real sweeps: matrix columns, failures never 0, zero calls on re-run, no leaked key."""

from __future__ import annotations

import math

import pandas as pd

from conftest import FAST, run_runner, sweep_dirs
from runner.records import read_cell_record
from runner.testing.fault_server import FaultServerProcess

KEY = "sk-test-PLANTED-sweep-987"


def judge_args(url: str) -> list[str]:
    return ["judge=openai", f"judge.base_url={url}", "judge.model=gpt-4o-mini", "judge.max_retries=2",
            "judge.backoff_base_s=0.05", "judge.backoff_max_s=0.2", "judge.timeout_s=2", "judge.reference=baseline"]


def test_judged_sweep_with_faults(tmp_path):
    with FaultServerProcess(fault_rate=0.3, seed=1, retry_after=0, hang_s=5) as server:
        args = ["-m", "format=gguf,mlx", "precision=fp16,q4_0", *FAST, "fidelity.enabled=false",
                *judge_args(server.base_url)]
        proc = run_runner(args, tmp_path, env={"OPENAI_API_KEY": KEY})
        assert proc.returncode == 0, proc.stderr[-3000:]
        first_requests = server.stats()["requests"]
        sweep = sweep_dirs(tmp_path)[0]
        df = pd.read_csv(sweep / "matrix.csv").set_index(["format", "precision"])
        ok = df[df.status == "ok"]
        assert len(ok) == 3
        for col in ("overall", "accuracy", "coherence", "relevance", "overall_code", "judged", "judge_cost_usd",
                    "judge_model"):
            assert col in df.columns
        assert (ok.judge_model.drop(("gguf", "fp16")) == "gpt-4o-mini").all()
        base = df.loc[("gguf", "fp16")]  # judge.reference=baseline: the baseline is never graded against itself
        assert math.isnan(base.overall) and base.judged == "0/7" and "not graded against its own answers" in base.judge_note
        assert df.loc[("gguf", "q4_0")].judge_reference == "baseline"
        for path in sweep.glob("*/result.json"):
            rec = read_cell_record(path)
            if (rec.cell.format, rec.cell.precision) == ("gguf", "fp16"):
                assert all(r.judgments == [] for r in rec.results) and rec.judge_note
                continue
            for r in rec.results:
                (j,) = r.judgments
                assert j is not None and j.attempts >= 1
                assert j.answer_truncated == (r.generation.finish_reason == "length")
                if j.scores is None:
                    assert j.error  # a failure says why; it is never a score of 0
                else:
                    assert all(1 <= v <= 10 for v in j.scores.values())
            valid = [j.scores["overall"] for r in rec.results for j in r.judgments if j.scores]
            row = df.loc[(rec.cell.format, rec.cell.precision)]
            if rec.status == "ok":
                assert row.judged == f"{len(valid)}/{len(rec.results)}"
                assert math.isclose(row.overall, sum(valid) / len(valid)) if valid else math.isnan(row.overall)

        # Re-running (or re-collecting) makes zero judge calls for judgments that succeeded.
        failed_before = int(ok.judge_failed.sum())
        proc = run_runner(args, tmp_path, env={"OPENAI_API_KEY": KEY})
        assert proc.returncode == 0
        if failed_before == 0:
            assert server.stats()["requests"] == first_requests

    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_missing_key_fails_before_generation(tmp_path):
    proc = run_runner([*FAST, "judge=openai"], tmp_path, env={"OPENAI_API_KEY": ""})
    assert proc.returncode == 1
    assert "OPENAI_API_KEY" in proc.stdout + proc.stderr
    (rec_path,) = (tmp_path / "runs").glob("*/result.json")
    assert read_cell_record(rec_path).results == []
    assert not (tmp_path / "store" / "generations").exists()


def test_unreachable_judge_records_failures_and_completes(tmp_path):
    args = [*FAST, "fidelity.enabled=false", "judge=local", "judge.base_url=http://127.0.0.1:9/v1",
            "judge.model=m", "judge.max_retries=1", "judge.backoff_base_s=0.01", "judge.timeout_s=1"]
    proc = run_runner(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (rec_path,) = (tmp_path / "runs").glob("*/result.json")
    rec = read_cell_record(rec_path)
    assert rec.status == "ok"
    assert all(j.scores is None and j.error for r in rec.results for j in r.judgments)
    df = pd.read_csv(rec_path.parent / "matrix.csv")
    assert df.judged[0] == "0/7" and math.isnan(df.overall[0]) and math.isnan(df.judge_cost_usd[0])


def test_judge_repeats_give_k_verdicts_and_a_noise_floor(tmp_path):
    with FaultServerProcess(fault_rate=0.0, seed=0) as server:
        args = [*FAST, "fidelity.enabled=false", *judge_args(server.base_url), "judge.reference=none",
                "judge.repeats=3"]
        proc = run_runner(args, tmp_path, env={"OPENAI_API_KEY": KEY})
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert server.stats()["requests"] == 3 * 7  # one request per (answer, repeat)
    (rec_path,) = (tmp_path / "runs").glob("*/result.json")
    rec = read_cell_record(rec_path)
    assert all(len(r.judgments) == 3 and all(j.scores for j in r.judgments) for r in rec.results)
    df = pd.read_csv(rec_path.parent / "matrix.csv")
    assert df.judged[0] == "21/21"
    assert "Judge noise floor: 7 answers were judged more than once" in (rec_path.parent / "report.md").read_text()


def test_report_states_the_sweep_judge_cost(tmp_path):
    with FaultServerProcess(fault_rate=0.0, seed=0) as server:
        args = [*FAST, "fidelity.enabled=false", *judge_args(server.base_url), "judge.reference=none",
                "judge.price_per_1m_input=1.0", "judge.price_per_1m_output=2.0"]
        assert run_runner(args, tmp_path, env={"OPENAI_API_KEY": KEY}).returncode == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    cost = pd.read_csv(run_dir / "matrix.csv").judge_cost_usd[0]
    assert cost > 0
    assert f"Judge cost of this sweep: ${cost:.4f}" in (run_dir / "report.md").read_text()


def test_judging_at_the_end_of_a_sweep_and_of_a_detached_one(tmp_path):
    """judge.where=end: cells only generate; the submitting process judges them all when the sweep ends.
    A sweep left before its end (records still pending) is judged by `replay resume`."""
    import json

    with FaultServerProcess(fault_rate=0.0, seed=0) as server:
        args = ["-m", "format=gguf", "precision=fp16,q4_0", *FAST, "fidelity.enabled=false",
                *judge_args(server.base_url), "judge.reference=none", "judge.where=end"]
        assert run_runner(args, tmp_path, env={"OPENAI_API_KEY": KEY}).returncode == 0
        assert server.stats()["requests"] == 14
        sweep = sweep_dirs(tmp_path)[0]
        assert (pd.read_csv(sweep / "matrix.csv").judged == "7/7").all()
        for path in sweep.glob("*/result.json"):  # as if the submitting process had been closed early
            data = json.loads(path.read_text())
            data["judge_pending"] = True
            for r in data["results"]:
                r["judgments"] = []
            path.write_text(json.dumps(data))
        proc = run_runner(["resume", str(sweep)], tmp_path, module="runner.replay", env={"OPENAI_API_KEY": KEY})
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "nothing to resume" in proc.stdout and "Matrix (2 ok)" in proc.stdout
        assert server.stats()["requests"] == 14  # judged again from the judgment cache: no new call
    assert (pd.read_csv(sweep / "matrix.csv").judged == "7/7").all()
    assert not any(read_cell_record(p).judge_pending for p in sweep.glob("*/result.json"))


def test_a_random_judge_on_seven_prompts_proves_nothing(tmp_path):
    """The fault app scores every request uniformly at random (1-10): on the seed suite's 7 prompts no build may be
    called not worse than the baseline, and the answer says the judge cannot establish it (issue 19)."""
    with FaultServerProcess(fault_rate=0.0, seed=11) as server:
        args = ["-m", "format=gguf,mlx", "precision=fp16,q8_0,q4_0", *FAST, "judge=openai", "judge.model=gpt-4o-mini",
                f"judge.base_url={server.base_url}", "judge.reference=none"]
        proc = run_runner(args, tmp_path, env={"OPENAI_API_KEY": KEY})
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = sweep_dirs(tmp_path)[0]
    df = pd.read_csv(sweep / "matrix.csv")
    judged = df[(df.status == "ok") & ~((df.format == "gguf") & (df.precision == "fp16"))]
    assert len(judged) == 3 and (judged.d_overall_verdict == "inconclusive").all()
    assert (judged.d_overall_margin == 0.5).all() and judged.d_overall_n_needed.gt(7).all()
    report = (sweep / "report.md").read_text()
    assert "The judge overall cannot show any build not worse than the baseline by 0.5 points: 7 prompts" in report
    assert "Recommendation (provisional)" in report and report.index("## Verdict") < report.index("## Overview")
    assert "Recommendation (provisional)" in proc.stdout  # the terminal's answer says so too
