"""The seed-matrix sweep end to end: rows, skips, columns, one conversion per model, cache on re-run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from conftest import FAST, run_runner, sweep_dirs
from runner.records import read_cell_record
from runner.store import Store

OK_CELLS = {("mlx", "fp16"), ("mlx", "8bit"), ("mlx", "4bit"), ("gguf", "fp16"), ("gguf", "q6_k"),
            ("gguf", "q5_k_m"), ("gguf", "q4_k_m"), ("gguf", "q4_0")}
MATRIX_COLUMNS = ["model", "format", "precision", "bits_per_weight", "size_gb", "build_s", "s_per_prompt",
                  "prompt_tps", "gen_tps", "ttft_s", "mean_tokens", "truncated_pct", "peak_rss_mb", "status", "reason"]


def matrix(sweep: Path) -> pd.DataFrame:
    return pd.read_csv(sweep / "matrix.csv")


def test_seed_matrix_rows_and_skips(seed_sweep):
    df = matrix(seed_sweep)
    assert len(df) == 14
    ok = df[df.status == "ok"]
    assert set(zip(ok.format, ok.precision)) == OK_CELLS
    skipped = df[df.status == "skipped"]
    assert len(skipped) == 6
    assert all("does not apply to format" in r for r in skipped.reason)
    assert (seed_sweep / "matrix.md").read_text().count("| ok ") == 8


def test_matrix_columns_and_values(seed_sweep):
    df = matrix(seed_sweep)
    assert set(MATRIX_COLUMNS) <= set(df.columns)
    ok = df[df.status == "ok"].set_index(["format", "precision"])
    assert (ok.gen_tps > 0).all() and (ok.size_gb > 0).all() and (ok.mean_tokens > 0).all()
    bpw = ok.bits_per_weight
    assert bpw["gguf", "fp16"] > bpw["gguf", "q6_k"] > bpw["gguf", "q5_k_m"] > bpw["gguf", "q4_k_m"] > 4.0
    assert bpw["mlx", "fp16"] > bpw["mlx", "8bit"] > bpw["mlx", "4bit"] > 4.0


def test_every_cell_wrote_typed_records(seed_sweep):
    for job in sorted(p for p in seed_sweep.iterdir() if p.is_dir() and p.name.isdigit()):
        rec = read_cell_record(job / "result.json")
        if rec.status == "ok":
            lines = (job / "generations.jsonl").read_text().splitlines()
            assert len(lines) == len(rec.results) == 7
            assert all(json.loads(line)["finish_reason"] in ("stop", "length") for line in lines)
            assert rec.artifact and rec.artifact.path and rec.source and rec.contract


def test_one_contract_for_every_cell(seed_sweep):
    """Same sampler, template, stop ids and identical prompt token ids in every ok cell."""
    recs = [read_cell_record(p) for p in seed_sweep.glob("*/result.json")]
    ok = [r for r in recs if r.status == "ok"]
    contracts = {json.dumps(r.contract.__dict__, default=lambda o: o.__dict__, sort_keys=True) for r in ok}
    assert len(contracts) == 1
    prompt_ids = {tuple((p.prompt_id, p.prompt_token_ids_sha) for p in r.results) for r in ok}
    assert len(prompt_ids) == 1
    assert all(r.contract.sampler.max_tokens == 16 for r in ok)


def test_conversion_once_per_model(seed_sweep):
    store = Store(seed_sweep.parents[1] / "store")
    assert len(store.builds("gguf-base")) == 1  # HF → F16 GGUF once, reused by every GGUF precision
    assert len(store.builds("gguf")) == 4
    assert len(store.builds("mlx")) == 3


def test_second_run_builds_nothing(seed_sweep):
    root = seed_sweep.parents[1]
    store = Store(root / "store")
    before = store.builds()
    proc = run_runner(["-m", "+experiment=seed_matrix", *FAST], root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert store.builds() == before
    second = sweep_dirs(root)[-1]
    assert second != seed_sweep
    for path in second.glob("*/result.json"):
        rec = read_cell_record(path)
        if rec.status == "ok":
            assert rec.artifact.cache_hit
            assert all(r.cache_hit for r in rec.results)
    assert matrix(second).generations_cached.sum() == 8 * 7


def test_collect_cli_rebuilds_matrix(seed_sweep, tmp_path):
    before = matrix(seed_sweep)
    (seed_sweep / "matrix.csv").unlink()
    proc = run_runner([str(seed_sweep)], tmp_path, module="runner.collect")
    assert proc.returncode == 0, proc.stderr
    pd.testing.assert_frame_equal(matrix(seed_sweep), before)
