"""The shared vocabulary: override parsing (deletions included) and build ids."""

from __future__ import annotations

import pytest
import yaml

from runner.collect import missing_row
from runner.identity import build_id, parse_build_id, parse_override


@pytest.mark.parametrize("item,expected", [
    ("format=mlx", ("format", "mlx")), ("+judge.k=v", ("judge.k", "v")), ("++a.b=c=d", ("a.b", "c=d")),
    ("~judge", ("judge", None)), ("~judge=openai", ("judge", None)),
])
def test_parse_override(item, expected):
    assert parse_override(item) == expected


def test_build_ids_round_trip():
    assert parse_build_id(build_id("gguf", "q4_k_m")) == ("gguf", "q4_k_m")
    with pytest.raises(ValueError, match="baseline='gguf': expected FORMAT_PRECISION"):
        parse_build_id("gguf")


def test_an_unfinished_job_row_reads_its_overrides_deletions_included(tmp_path):
    job = tmp_path / "3"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["format=mlx", "precision=4bit", "~judge"]))
    row = missing_row(job, "no result.json")
    assert row["format"] == "mlx" and row["precision"] == "4bit" and "judge" not in row and "~judge" not in row
    assert row["job"] == 3 and row["status"] == "failed"
