"""The report from synthetic records: tables, picks, thresholded recommendation, fairness, failures, plot."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest

from runner.analysis import findings
from runner.analysis.matrix import build_matrix
from runner.records import CheckOutcome
from runner.analysis.report import write_report
from test_summary import answer, cell_record  # the synthetic record builder (tests/ is on sys.path)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def sweep_records(judged: bool = True, max_tokens_of_q8: int = 8, q4_overall: float = 7):
    def results(overall: float, gen_tps: float, agreement: float = 1.0):
        return [answer(f"p{i}", 0, overall + (i % 3 - 1) if judged else None, gen_tps=gen_tps + i,
                       agreement=agreement) for i in range(12)]
    return [
        cell_record("gguf", "fp16", results(7, 100), job=0, kld=0.0, size_gb=16.0),
        cell_record("gguf", "q8_0", results(7, 150), job=1, kld=0.004, top1=97.0, size_gb=8.5,
                    max_tokens=max_tokens_of_q8),
        cell_record("gguf", "q4_0", results(q4_overall, 220, 0.5), job=2, kld=0.08, top1=88.0, size_gb=4.5),
        cell_record("mlx", "fp16", results(7, 90), job=3, kld=2e-6, size_gb=16.0),
        cell_record("mlx", "q4_k_m", [], job=4, status="skipped", reason="precision 'q4_k_m' does not apply to mlx"),
        cell_record("gguf", "q2_k", [], job=5, status="failed", reason="RuntimeError: quantize crashed"),
    ]


def report(tmp_path: Path, records, **options) -> str:
    df = build_matrix(records, baseline="gguf_fp16")
    write_report(df, findings.find(records), tmp_path, baseline="gguf_fp16", **options)
    return (tmp_path / "report.md").read_text()


def test_report_has_every_table_and_lists_skipped_and_failed_cells(tmp_path):
    md = report(tmp_path, sweep_records())
    for title in ("Overview", "Highlights", "Quality (judge)", "Fidelity", "Speed", "Size", "Per category",
                  "Fairness", "Skipped cells", "Failed cells", "Statistics", "Plots"):
        assert f"## {title}\n" in md
    assert "| gguf q4_0 " in md and "| Build " in md
    assert "precision 'q4_k_m' does not apply to mlx" in md and "RuntimeError: quantize crashed" in md
    assert "Best by quality: **gguf fp16**" in md or "Best by quality: **gguf q8_0**" in md
    assert "Fastest: **gguf q4_0**" in md and "Smallest: **gguf q4_0**" in md
    assert "Cross-engine noise floor: **mlx fp16** vs `gguf_fp16`" in md
    assert "✅ All 4 ok cells of `tiny` share one generation contract" in md
    assert "≈" in md  # mlx fp16's judge Δ is indistinguishable from zero
    assert "| code " in md or "| code |" in md.replace("  ", " ")


def test_recommendation_follows_the_thresholds(tmp_path):
    md = report(tmp_path, sweep_records())
    assert "Recommendation: **gguf q8_0**" in md  # q4_0 fails KLD ≤ 0.05 and top-1 ≥ 90 %
    assert "KLD 0.08 > 0.05; top-1 88% < 90%" in md
    loose = report(tmp_path, sweep_records(), max_kld=0.1, min_top1=80.0)
    assert "Recommendation: **gguf q4_0**" in loose and "max_kld=0.1, min_top1=80.0" in loose
    worse = report(tmp_path, sweep_records(q4_overall=5), max_kld=0.1, min_top1=80.0)
    assert "Recommendation: **gguf q8_0**" in worse and "judge overall WORSE (the sequence stops here)" in worse
    assert "| WORSE [-2, -2]" in worse  # the verdict table leads the report
    assert worse.index("## Verdict") < worse.index("## Overview")


def test_contract_mismatch_is_flagged_loudly(tmp_path):
    md = report(tmp_path, sweep_records(max_tokens_of_q8=16))
    assert "⚠️ **CONTRACT MISMATCH (tiny)**: max_tokens differ" in md


def test_unjudged_sweep_uses_kld_and_html_embeds_a_valid_png(tmp_path):
    md = report(tmp_path, sweep_records(judged=False))
    assert "Not judged" in md and "Best by quality: **mlx fp16**" in md  # lowest KLD, the reference excluded
    html = (tmp_path / "report.html").read_text()
    assert html.count("<table") >= 8 and "data:image/png;base64," in html
    png = tmp_path / "pareto.png"
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    assert matplotlib.image.imread(png).shape[0] > 100


def test_no_quality_data_means_no_recommendation(tmp_path):
    records = [dataclasses.replace(r, fidelity=None) for r in sweep_records(judged=False)]
    md = report(tmp_path, records)
    assert "Recommendation: none" in md and "No plot" in md
    assert not (tmp_path / "pareto.png").exists()


@pytest.mark.parametrize("status", ["skipped", "failed"])
def test_sweep_without_ok_cells_still_reports(tmp_path, status):
    records = [cell_record("gguf", "fp16", [], status=status, reason="why")]
    md = report(tmp_path, records)
    assert f"| gguf fp16 | {status}" in md and "why" in md


def with_runtime(records, devices):
    from runner.records import HostInfo, RuntimeInfo

    host = HostInfo("fp", "Some CPU", 8, None, "Darwin-arm64", "mac")
    for rec, device in zip(records, devices):
        if rec.status == "ok":
            rec.host, rec.runtime = host, RuntimeInfo(device, "float32" if device == "cpu" else "float16")
    return records


def test_cells_of_one_model_on_different_devices_are_flagged_loudly(tmp_path):
    md = report(tmp_path, with_runtime(sweep_records(), ["cpu", "cpu", "cpu", "metal"]))
    assert "⚠️ **DEVICE MISMATCH (tiny)**: cells ran on cpu, metal" in md
    assert "mlx fp16: metal (float16)" in md
    same = report(tmp_path, with_runtime(sweep_records(), ["cpu"] * 4))
    assert "DEVICE MISMATCH" not in same and "Devices (tiny): gguf fp16: cpu (float32)" in same


def test_stale_and_parallel_speed_are_flagged(tmp_path):
    records = with_runtime(sweep_records(), ["cpu"] * 4)
    records[1].speed.stale_answers = 3
    records[2].speed.parallel_jobs = 2
    md = report(tmp_path, records)
    assert "⚠️ **STALE SPEED**: gguf q8_0" in md
    assert "⚠️ **SPEED NOT COMPARABLE**: gguf q4_0 were measured while other cells ran" in md


def test_baseline_reference_mode_is_explained_and_not_self_graded(tmp_path):
    records = sweep_records()
    for rec in records:
        rec.judge_reference = "baseline"
    base = records[0]
    for r in base.results:
        r.judgments = []
    base.judge_note = "baseline cell: not graded against its own answers (judge.reference=baseline)"
    md = report(tmp_path, records)
    assert "**The baseline is not graded against itself**" in md
    assert "The judge overall cannot show any build not worse than the baseline by 0.5 points here: " \
           "judge.reference=baseline" in md and "Recommendation (provisional)" in md
    assert "baseline cell: not graded against its own answers" in md


def test_html_escapes_everything_from_the_sweep(tmp_path):
    evil = tmp_path / "<script>alert(1)<script>"
    evil.mkdir()
    records = sweep_records()
    records[5].reason = "<img src=x onerror=alert(2)>"
    write_report(build_matrix(records, baseline="gguf_fp16"), findings.find(records), evil, baseline="gguf_fp16")
    html = (evil / "report.html").read_text()
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;script&gt;" in html
    assert "<img src=x" not in html and "<strong>" in html  # our own markup still renders


def test_matrix_md_shows_the_headline_columns_and_csv_keeps_all(tmp_path):
    from runner.analysis.matrix import HEADLINE, write_matrix

    df = build_matrix(sweep_records(), baseline="gguf_fp16")
    write_matrix(df, tmp_path)
    header = (tmp_path / "matrix.md").read_text().splitlines()[0]
    assert [c.strip() for c in header.strip("|").split("|")] == list(HEADLINE)
    rows = (tmp_path / "matrix.md").read_text()
    assert re.search(r"\| gguf q8_0 +\| ok ", rows) and "nan" not in rows
    assert len(df.columns) > 60 and (tmp_path / "matrix.csv").read_text().splitlines()[0].count(",") == len(df.columns) - 1


def test_speed_is_grouped_by_host_and_not_compared_across_hardware(tmp_path):
    records = with_runtime(sweep_records(), ["cpu"] * 4)
    other = dataclasses.replace(records[2].host, fingerprint="fp-other", cpu="Other CPU", node="node-7", scheduler_job="4242")
    records[2].host = other
    df = build_matrix(records, baseline="gguf_fp16")
    q4 = df.set_index("precision").loc["q4_0"]
    assert pd.isna(q4["d_gen_tps"]) and pd.notna(q4["d_overall"])  # speed vs another machine: no delta
    assert q4["node"] == "node-7" and str(q4["slurm_job"]) == "4242"
    md = report(tmp_path, records)
    assert "⚠️ **HARDWARE MISMATCH (tiny)**: its cells ran on 2 kinds of hardware" in md
    speed = md.split("## Speed")[1].split("## Size")[0]
    hosts = [h for row in speed.splitlines() for h in ("Other CPU", "Some CPU") if h in row]
    assert hosts == sorted(hosts) and len(hosts) == 4  # rows grouped by host


def test_a_baseline_that_passes_no_check_is_a_floor_not_evidence(tmp_path):
    records = sweep_records(judged=False)
    for rec in records:
        for i, r in enumerate(rec.results):  # the baseline fails every check, the others pass some
            r.check = CheckOutcome(passed=rec.cell.precision != "fp16" and i % 2 == 0, detail="x")
    md = report(tmp_path, records)
    assert "the baseline passes no check: a floor, not evidence" in md and "Recommendation (provisional)" in md
    for rec in records:
        for r in rec.results:
            r.check = CheckOutcome(passed=r.prompt_id != "p1", detail="x")
    assert "the baseline passes no check" not in report(tmp_path, records)


def test_llamacpp_protocol_builds_are_held_against_llamacpps_published_table(tmp_path):
    records = sweep_records()
    for rec in records[:3]:
        rec.fidelity.protocol = "llamacpp"
    plain = report(tmp_path, sweep_records())
    assert "Against llama.cpp's published KLD" not in plain  # protocol runner: nothing to hold it against
    md = report(tmp_path, records)
    section = md.split("## Against llama.cpp's published KLD\n")[1].split("\n## ")[0]
    assert "Different model, same protocol" in section
    assert "| gguf q8_0 " in section and "0.001355" in section  # llama.cpp's q8_0 row
    assert "| gguf q4_0 " in section and "0.07194 " in section
    assert "gguf fp16" not in section  # the baseline has nothing to compare
    assert "rank in the same order" in section
    records[1].fidelity.kld_mean = 0.5  # q8_0 now worse than q4_0: the order flips
    md = report(tmp_path, records)
    assert "The order differs from llama.cpp's for 1 of 1 pairs" in md
