"""The shared vocabulary: override parsing (deletions included) and build ids."""

from __future__ import annotations

import pytest
import yaml

from runner.analysis.matrix import missing_row
from runner.sweep import Job
from runner.identity import build_id, parse_build_id, parse_override


@pytest.mark.parametrize("item,expected", [
    ("format=mlx", ("format", "mlx")), ("+judge.k=v", ("judge.k", "v")), ("++a.b=c=d", ("a.b", "c=d")),
    ("~judge", ("judge", None)), ("~judge=openai", ("judge", None)),
])
def test_parse_override(item, expected):
    assert parse_override(item) == expected


def test_build_ids_round_trip():
    assert parse_build_id(build_id("gguf", "q4_k_m")) == ("gguf", "q4_k_m", "none")
    assert build_id("gguf", "q4_k_m", "imatrix") == "gguf_q4_k_m+imatrix"
    assert parse_build_id("gguf_q4_k_m+imatrix") == ("gguf", "q4_k_m", "imatrix")
    with pytest.raises(ValueError, match="baseline='gguf': expected FORMAT_PRECISION"):
        parse_build_id("gguf")


def test_an_unfinished_job_row_reads_its_overrides_deletions_included(tmp_path):
    job = tmp_path / "3"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["format=mlx", "precision=4bit", "~judge"]))
    row = missing_row(Job(3, job, problem="no result.json"))
    assert row["format"] == "mlx" and row["precision"] == "4bit" and "judge" not in row and "~judge" not in row
    assert row["job"] == 3 and row["status"] == "failed"


def test_version_1_records_are_read_and_collected(tmp_path):
    """A sweep written by the first schema (one `judgment` + `judge_repeats`, runtime as a dict) still collects."""
    import shutil
    from pathlib import Path

    import pandas as pd

    from runner.analysis.collect import main as collect
    from runner.records import read_cell_record

    sweep = shutil.copytree(Path(__file__).parent / "data" / "v1_sweep", tmp_path / "v1")
    rec = read_cell_record(sweep / "1" / "result.json")
    assert rec.schema_version == 2 and all(len(r.judgments) == 2 for r in rec.results)  # judge.repeats=2
    assert rec.runtime.device == "unknown" and rec.runtime.settings["n_threads"] == 1
    assert rec.fidelity.baseline == "gguf_fp16" and rec.speed.mean_tokens > 0
    assert collect([str(sweep)]) == 0
    df = pd.read_csv(sweep / "matrix.csv").set_index("precision")
    assert df.loc["q4_0", "judged"] == "14/14" and df.loc["q4_0", "kld_mean"] > 0
    assert df.loc["q4_0", "gen_tps"] > 0  # an old record has no host tag: its speed is taken as measured here
