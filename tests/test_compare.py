"""`python -m runner.replay compare A B`: two real tiny sweeps (judged by the fault server), matched build by
build, deltas against hand computations, refusals and escaping; the delta math on hand-made records."""

from __future__ import annotations

import dataclasses

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.stats
import pytest

from conftest import REPO, run_runner, sweep_dirs
from runner.analysis.compare import (Cell, CompareError, compare, delta_text, fidelity_delta, match, model_keys, paired_results,
                            sections)
from runner.analysis.matrix_stats import speed_tag
from runner.records import (CellIdentity, CellRecord, FidelityResult, Generation, Judgment, ModelSourceInfo,
                            PromptResult, read_cell_record)
from runner.replay import main
from runner.sweep import Job, Sweep, load_sweep
from runner.testing.fault_server import FaultServerProcess

# 3 fidelity chunks: enough for a KLD CI
SMALL = ["generation.max_tokens=8", "fidelity.chunk_len=64", "fidelity.tokens=192", "quiet=true"]
ENV = {"OPENAI_API_KEY": "sk-test"}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("store")  # shared: B reuses A's model, conversions and quantizations


@pytest.fixture(scope="module")
def judge_server():
    with FaultServerProcess(fault_rate=0.0) as server:
        yield server


def _sweep(args: list[str], root: Path, store: Path) -> Path:
    proc = run_runner(["-m", "format=gguf", *args, f"store_dir={store}"], root, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = sweep_dirs(root)
    return path


@pytest.fixture(scope="module")
def sweep_a(judge_server, store, tmp_path_factory) -> Path:
    judge = ["judge=openai", f"judge.base_url={judge_server.base_url}"]
    return _sweep(["precision=fp16,q8_0,q4_0", *judge, *SMALL], tmp_path_factory.mktemp("a"), store)


@pytest.fixture(scope="module")
def sweep_b(judge_server, store, tmp_path_factory) -> Path:
    """Longer answers, q8_0 dropped and q4_k_m added."""
    judge = ["judge=openai", f"judge.base_url={judge_server.base_url}"]
    return _sweep(["precision=fp16,q4_0,q4_k_m", *judge, *SMALL, "generation.max_tokens=12"],
                  tmp_path_factory.mktemp("b"), store)


@pytest.fixture(scope="module")
def other_model(store, tmp_path_factory) -> Path:
    """The tiny model with other weights (builder_seed=1): the same model name, another content hash."""
    return _sweep(["precision=fp16", "model.builder_seed=1", "fidelity.enabled=false", "generation.max_tokens=4",
                   "quiet=true"], tmp_path_factory.mktemp("other"), store)


def records(sweep_dir: Path) -> dict[str, CellRecord]:
    recs = [read_cell_record(d / "result.json") for d in sweep_dir.iterdir() if d.name.isdigit()]
    return {f"{r.cell.format} {r.cell.precision}": r for r in recs}


def edit_record(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# ------------------------------------------------------------------ two real sweeps


def test_builds_are_matched_and_the_rest_listed(sweep_a, sweep_b, tmp_path, capsys):
    assert main(["compare", str(sweep_a), str(sweep_b), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    df = pd.read_csv(tmp_path / "compare.csv")
    assert list(df["build"]) == ["gguf fp16", "gguf q4_0"]
    assert set(df["status_a"]) == set(df["status_b"]) == {"ok"}
    assert (df["differs"] == "generation.max_tokens: 8 → 12").all()  # run locations (outputs_root...) left out
    assert "only in A: gguf q8_0 (ok)" in out and "only in B: gguf q4_k_m (ok)" in out
    assert "generation.max_tokens: 8 → 12" in out and str(tmp_path / "compare.html") in out
    md = (tmp_path / "compare.md").read_text()
    only_a, only_b = md.split("## Only in A")[1].split("## Only in B")
    assert "gguf q8_0" in only_a and "q4_k_m" not in only_a and "gguf q4_k_m" in only_b
    assert "| generation.max_tokens |" in md and "not paired per prompt" in md
    assert (tmp_path / "compare.html").read_text().startswith("<!doctype html>")


def test_default_out_is_b(sweep_a, sweep_b):
    assert main(["compare", str(sweep_a), str(sweep_b)]) == 0
    assert all((sweep_b / f"compare.{ext}").is_file() for ext in ("csv", "md", "html"))
    assert load_sweep(sweep_b).records  # still a sweep


def test_deltas_equal_hand_computations(sweep_a, sweep_b):
    cmp = compare(load_sweep(sweep_a), load_sweep(sweep_b))
    row = next(p.row for p in cmp.pairs if p.build == "gguf q4_0")
    a, b = records(sweep_a)["gguf q4_0"], records(sweep_b)["gguf q4_0"]
    by_b = {(r.prompt_id, r.repeat): r for r in b.results}
    pairs = [(r, by_b[(r.prompt_id, r.repeat)]) for r in a.results]
    assert row["paired"] == len(pairs) == 7 and row["unpaired_a"] == row["unpaired_b"] == 0

    def overall(r):
        return np.mean([j.scores["overall"] for j in r.judgments])
    assert row["d_overall"] == pytest.approx(np.mean([overall(y) - overall(x) for x, y in pairs]))
    assert row["d_overall_n"] == 7 and 0 < row["d_overall_p"] <= 1 and isinstance(row["d_overall_sig"], bool)
    assert row["agreement_pct"] == pytest.approx(
        100 * np.mean([x.generation.token_ids == y.generation.token_ids for x, y in pairs]))
    assert row["agreement_pct"] == 0  # 8 vs 12 tokens: no answer is the same

    def tps(r, rec):
        g = r.generation
        ok = g.completion_tokens > 1 and g.gen_tps > 0 and g.measured_on == speed_tag(rec)
        return g.gen_tps if ok else math.nan
    diffs = [tps(y, b) - tps(x, a) for x, y in pairs]
    assert row["speed_compared"] is True
    assert row["d_gen_tps"] == pytest.approx(np.nanmean(diffs))
    assert row["d_s_per_prompt"] == pytest.approx(np.mean([y.generation.wall_s - x.generation.wall_s for x, y in pairs]))
    fa, fb = a.fidelity, b.fidelity  # fidelity does not depend on max_tokens: one cached score, read by both
    assert fa.key == fb.key and row["same_kld_mean"] is True and math.isnan(row["d_kld_mean"])
    assert delta_text(row, "kld_mean") == "same measurement (cache)"
    assert row["d_size_gb"] == pytest.approx((b.artifact.size_bytes - a.artifact.size_bytes) / 1e9)


def test_a_sweep_against_itself_is_the_same_measurement_not_a_zero_delta(sweep_a, tmp_path, capsys):
    """Both sides read the same store entries: a delta between one cached measurement and itself is no
    measurement, so no interval is shown, only "same measurement (cache)"."""
    df = compare(load_sweep(sweep_a), load_sweep(sweep_a)).table
    assert list(df["build"]) == ["gguf fp16", "gguf q8_0", "gguf q4_0"]
    assert (df["agreement_pct"] == 100).all() and (df["differs"] == "").all() and df["speed_compared"].all()
    for m in ("overall", "accuracy", "gen_tps", "s_per_prompt", "kld_mean", "top1_pct"):
        assert df[f"same_{m}"].all() and df[f"d_{m}"].isna().all(), m
    assert (df["d_size_gb"] == 0).all() and (df["d_bits_per_weight"] == 0).all()  # deterministic, not measured
    assert main(["compare", str(sweep_a), str(sweep_a), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "same measurement (cache)" in printed and "[+0, +0]" not in printed


def test_another_model_is_refused_naming_both(sweep_a, other_model, tmp_path, capsys):
    assert main(["compare", str(sweep_a), str(other_model), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: not the same model") and "\n" not in err
    assert str(sweep_a) in err and str(other_model) in err
    ha = read_cell_record(sweep_a / "0" / "result.json").source.content_hash
    hb = read_cell_record(other_model / "0" / "result.json").source.content_hash
    assert ha != hb and ha[:20] in err and hb[:20] in err and err.count("tiny (content") == 2
    assert not (tmp_path / "out").exists()


def test_bad_dirs_exit_2(sweep_a, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for bad in (tmp_path / "nope", tmp_path / "empty"):
        assert main(["compare", str(sweep_a), str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and str(bad) in err and err.count("\n") == 1


def test_not_ok_cells_are_listed_with_their_reason_and_pages_escape_them(sweep_a, sweep_b, tmp_path, capsys):
    copy = shutil.copytree(sweep_b, tmp_path / "b")
    edit_record(copy / "0" / "result.json", status="failed", reason="<script>alert('fp16')</script>")
    edit_record(copy / "2" / "result.json", status="failed", reason="<script>alert('q4_k_m')</script>")
    config = copy / "1" / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("name: default", "name: <script>alert('gen')</script>", 1))
    assert main(["compare", str(sweep_a), str(copy), "--out", str(tmp_path / "out")]) == 0
    df = pd.read_csv(tmp_path / "out" / "compare.csv").set_index("build")
    assert df.loc["gguf fp16", "status_b"] == "failed" and math.isnan(df.loc["gguf fp16", "d_kld_mean"])
    assert df.loc["gguf fp16", "reason_b"] == "<script>alert('fp16')</script>"
    assert "<script>alert('gen')</script>" in df.loc["gguf q4_0", "differs"]
    assert "only in B: gguf q4_k_m (failed)" in capsys.readouterr().out
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "## Not compared" in md.split("## Only in A")[0] and "alert('fp16')" in md
    html = (tmp_path / "out" / "compare.html").read_text()
    assert "<script>alert" not in html  # (the page's own sorting script is the only <script>)
    for what in ("fp16", "q4_k_m", "gen"):
        assert f"&lt;script&gt;alert('{what}')&lt;/script&gt;" in html


def test_speed_on_other_hardware_is_left_empty(sweep_a, tmp_path, capsys):
    copy = shutil.copytree(sweep_a, tmp_path / "a2")
    for d in ("0", "1", "2"):
        data = json.loads((copy / d / "result.json").read_text())
        data["host"]["fingerprint"] = "0000000000000000"
        (copy / d / "result.json").write_text(json.dumps(data))
    assert main(["compare", str(sweep_a), str(copy), "--out", str(tmp_path / "out")]) == 0
    assert "HARDWARE MISMATCH" in capsys.readouterr().out
    df = pd.read_csv(tmp_path / "out" / "compare.csv")
    assert not df["speed_compared"].any() and df["d_gen_tps"].isna().all() and (df["d_gen_tps_n"] == 0).all()
    assert df["same_overall"].all()  # the copy reads the same judgments: quality is one measurement, not a Δ
    assert "**HARDWARE MISMATCH**" in (tmp_path / "out" / "compare.md").read_text()


# ------------------------------------------------------------------ records without engines


def test_old_records_without_host_tags_compare_without_speed(tmp_path, capsys):
    v1 = REPO / "tests" / "data" / "v1_sweep"
    assert main(["compare", str(v1), str(v1), "--out", str(tmp_path)]) == 0
    assert "SPEED NOT COMPARABLE" in capsys.readouterr().out
    df = pd.read_csv(tmp_path / "compare.csv")
    assert df["same_overall"].all() and df["d_gen_tps"].isna().all() and (df["agreement_pct"] == 100).all()


def _result(pid: str, ids: list[int], text: str = "q", overall: int | None = None, repeat: int = 0) -> PromptResult:
    gen = Generation("a", ids, 3, len(ids), "stop", 0.1, 10.0, 50.0, 0.2)
    scores = dict.fromkeys(("overall", "accuracy", "coherence", "relevance"), overall)
    judged = [Judgment("m", "v1", scores=scores)] if overall is not None else []
    return PromptResult(pid, "c", repeat, text, None, "r", "sha", "k", gen, "a", judgments=judged)


def _record(results: list[PromptResult], model: str = "tiny", content: str | None = "h1") -> CellRecord:
    source = ModelSourceInfo(model, "builder", "/m", content) if content else None
    return CellRecord(CellIdentity(model, "gguf", "q4_0", "default", "seed", "none"), "ok", source=source,
                      results=results)


def test_answers_pair_by_key_and_prompt_text_only():
    a = _record([_result("p1", [1, 2]), _result("p2", [3]), _result("p3", [4]), _result("p1", [1], repeat=1)])
    b = _record([_result("p1", [1, 2]), _result("p2", [3], text="edited"), _result("p4", [5])])
    pairs, left_a, left_b = paired_results(a, b)
    assert [(x.prompt_id, x.repeat) for x, _ in pairs] == [("p1", 0)] and (left_a, left_b) == (3, 2)


def test_fidelity_delta_ci_from_both_standard_errors():
    def f(kld, se, chunks=4, top1=90.0):
        return FidelityResult("gguf_fp16", 256, kld, se, 0, 0, 0, top1, 1, 1, 0, 0, n_chunks=chunks)
    d = fidelity_delta(f(0.10, 0.03), f(0.04, 0.04, top1=95.0))
    t = scipy.stats.t.ppf(0.975, 0.05 ** 4 / (0.03 ** 4 / 3 + 0.04 ** 4 / 3))  # Welch: 4 chunks a side
    assert d["d_kld_mean"] == pytest.approx(-0.06) and d["d_top1_pct"] == pytest.approx(5.0)
    assert (d["d_kld_mean_lo"], d["d_kld_mean_hi"]) == pytest.approx((-0.06 - t * 0.05, -0.06 + t * 0.05))
    one = f(0.1, 0.02)
    assert fidelity_delta(dataclasses.replace(one, key="k"), dataclasses.replace(one, key="k"))["same_kld_mean"]
    for no_ci in (fidelity_delta(f(0.1, math.nan), f(0.2, 0.01)), fidelity_delta(f(0.1, 0.01, chunks=2), f(0.2, 0.01))):
        assert no_ci["d_kld_mean"] == pytest.approx(0.1) and math.isnan(no_ci["d_kld_mean_lo"])
    assert math.isnan(fidelity_delta(None, f(0.1, 0.01))["d_kld_mean"])


def _sweep_of(*recs: CellRecord) -> Sweep:
    return Sweep(Path("/s"), [Job(i, Path(f"/s/{i}"), r) for i, r in enumerate(recs)])


def test_model_identity_is_the_content_hash():
    same = _sweep_of(_record([], "tiny", "h1"))
    model_keys(same, _sweep_of(_record([], "renamed", "h1")))  # other name, same weights: fine
    with pytest.raises(CompareError, match=r"A \(/s\) is of model tiny \(content h1\), B \(/s\) of model tiny "
                                           r"\(content h2\)"):
        model_keys(same, _sweep_of(_record([], "tiny", "h2")))
    model_keys(same, _sweep_of(_record([], "tiny", None)))  # no source on a side: by name
    with pytest.raises(CompareError, match="other"):
        model_keys(same, _sweep_of(_record([], "other", None)))


def test_several_cells_of_one_build_pair_by_what_varies_among_them():
    def cell(job, gen, tokens="8"):
        return Cell(("tiny", "gguf", "q4_0"), "gguf q4_0", job, "ok", None, None,
                    {"generation.name": gen, "generation.max_tokens": tokens})
    a = [cell(0, "default"), cell(1, "sampled")]
    b = [cell(0, "sampled", "12")]
    pairs, only_a, only_b = match(a, b)
    assert [(x.job, y.job) for x, y in pairs] == [(1, 0)] and [c.job for c in only_a] == [0] and not only_b
    assert pairs[0][0].build == "gguf q4_0 (generation=sampled)"


def test_too_few_prompts_give_no_interval_and_no_significance():
    a = _sweep_of(_record([_result(p, [1], overall=5) for p in ("p1", "p2", "p3")]))
    b = _sweep_of(_record([dataclasses.replace(_result(p, [2], overall=8), generation_key="k2")
                           for p in ("p1", "p2", "p3")]))
    cmp = compare(a, b)
    (row,) = [p.row for p in cmp.pairs]
    assert row["d_overall"] == 3 and row["d_overall_n"] == 3 and row["d_overall_sig"] is None
    assert math.isnan(row["d_overall_lo"]) and delta_text(row, "overall") == "+3"  # a Δ without an interval


def test_pairwise_verdicts_are_said_not_compared(sweep_a, tmp_path):
    """Each sweep's pairwise verdicts are against its own baseline: compare names them and leaves them out."""
    copy = shutil.copytree(sweep_a, tmp_path / "a2")
    data = json.loads((copy / "1" / "result.json").read_text())
    data["results"][0]["judgments"][0]["winner"] = "build"
    (copy / "1" / "result.json").write_text(json.dumps(data))
    assert main(["compare", str(sweep_a), str(copy), "--out", str(tmp_path / "out")]) == 0
    assert "Pairwise verdicts (judge.mode=pairwise) are not compared" in (tmp_path / "out" / "compare.md").read_text()
    assert not any("pairwise" in c for c in pd.read_csv(tmp_path / "out" / "compare.csv").columns)
    assert main(["compare", str(sweep_a), str(sweep_a), "--out", str(tmp_path / "same")]) == 0
    assert "Pairwise verdicts" not in (tmp_path / "same" / "compare.md").read_text()
