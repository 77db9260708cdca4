"""Calibrated GGUF quants: method=imatrix with llama.cpp's own tools on the tiny model, the IQ types, skip reasons,
and what the importance matrix's cache keys hold."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pandas as pd
import pytest

from conftest import FAST, run_runner, sweep_dirs
from runner.backends import llama_tools
from runner.records import read_cell_record

NO_FID = [*FAST, "fidelity.enabled=false"]


@pytest.fixture(scope="module", autouse=True)
def tools_built():
    """llama.cpp's tools, built once per machine (the machine-wide cache; CI pre-builds them)."""
    try:
        llama_tools.tools()
    except llama_tools.MissingBuildTool as e:
        if os.environ.get("REQUIRE_LLAMA_TOOLS") == "1":
            pytest.fail(str(e))
        pytest.skip(str(e))


def builds(root: Path, kind: str) -> int:
    return sum(json.loads(line)["kind"] == kind for line in (root / "store" / "builds.jsonl").read_text().splitlines())


def sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The issue's sweep: every cell ok or skipped with its reason, imatrix builds labelled."""
    root = tmp_path_factory.mktemp("calibrated")
    proc = run_runner(["-m", "format=gguf,mlx", "precision=fp16,q4_k_m,iq4_xs,iq2_xxs", "method=none,imatrix",
                       *FAST], root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = sweep_dirs(root)
    return root, path, pd.read_csv(path / "matrix.csv")


def row(df: pd.DataFrame, fmt: str, precision: str, method: str) -> pd.Series:
    (i,) = df.index[(df.format == fmt) & (df.precision == precision) & (df.method == method)]
    return df.loc[i]


def test_every_cell_is_ok_or_skipped_with_its_reason(sweep):
    _, path, df = sweep
    assert set(df.status) == {"ok", "skipped"}
    reasons = {(r.format, r.precision, r.method): r.reason for r in df.itertuples() if r.status == "skipped"}
    assert reasons[("gguf", "iq2_xxs", "none")] == "IQ2_XXS requires an imatrix: add method=imatrix"
    assert "does not apply to format 'mlx'" in reasons[("mlx", "fp16", "imatrix")]
    assert "keeps the weights in floating point" in reasons[("gguf", "fp16", "imatrix")]
    ok = {(r.format, r.precision, r.method) for r in df.itertuples() if r.status == "ok"}
    assert ok == {("gguf", "fp16", "none"), ("gguf", "q4_k_m", "none"), ("gguf", "iq4_xs", "none"),
                  ("gguf", "q4_k_m", "imatrix"), ("gguf", "iq4_xs", "imatrix"), ("gguf", "iq2_xxs", "imatrix"),
                  ("mlx", "fp16", "none")}
    assert row(df, "gguf", "q4_k_m", "imatrix").calibration == "default"  # a calibrated method given none
    assert row(df, "gguf", "q4_k_m", "none").calibration == "none"
    assert "| gguf q4_k_m+imatrix" in (path / "matrix.md").read_text()
    assert "gguf q4_k_m+imatrix" in (path / "report.md").read_text()
    # fidelity of every build against the plain F16 baseline, the imatrix builds included
    assert row(df, "gguf", "iq2_xxs", "imatrix").kld_mean > row(df, "gguf", "q4_k_m", "imatrix").kld_mean > 0


def test_one_importance_matrix_serves_every_precision_and_changes_the_quantization(sweep):
    root, path, df = sweep
    assert builds(root, "imatrix") == 1  # computed once per (model, calibration, settings)
    records = {(r.cell.precision, r.cell.method): r for r in map(read_cell_record, path.glob("*/result.json"))
               if r.status == "ok"}
    plain, calibrated = records[("q4_k_m", "none")], records[("q4_k_m", "imatrix")]
    assert sha(plain.artifact.path) != sha(calibrated.artifact.path)  # same type, other rounding choices
    assert calibrated.artifact.params == {"ftype": "Q4_K_M", "method": "imatrix"}
    assert calibrated.artifact.tool_versions["llama-tools"]  # the record names the tool build
    assert "llama-tools" not in plain.artifact.tool_versions
    assert calibrated.cell.calibration == "default"


def test_the_calibration_text_is_in_every_key_it_shapes(sweep, tmp_path):
    root, _, _ = sweep
    text = tmp_path / "mine.txt"
    text.write_text((Path(__file__).parents[1] / "runner" / "data" / "fidelity_eval.txt").read_text())
    before = {k: builds(root, k) for k in ("imatrix", "gguf")}
    again = run_runner(["format=gguf", "precision=q4_k_m", "method=imatrix", *NO_FID], root)
    assert again.returncode == 0 and {k: builds(root, k) for k in before} == before  # default text: all cached
    other = run_runner(["format=gguf", "precision=q4_k_m", "method=imatrix", "calibration=file",
                        f"calibration.file={text}", *NO_FID], root)
    assert other.returncode == 0, other.stderr[-2000:]
    assert builds(root, "imatrix") == before["imatrix"] + 1 and builds(root, "gguf") == before["gguf"] + 1
    settings = run_runner(["format=gguf", "precision=q4_k_m", "method=imatrix", "method.imatrix.ctx=256", *NO_FID],
                          root)
    assert settings.returncode == 0 and builds(root, "imatrix") == before["imatrix"] + 2


def test_a_missing_calibration_file_is_refused_before_any_cell_runs(tmp_path):
    proc = run_runner(["format=gguf", "precision=q4_k_m", "method=imatrix", "calibration=file",
                       f"calibration.file={tmp_path}/none.txt", *NO_FID], tmp_path)
    assert proc.returncode == 2 and f"calibration.file: file not found: {tmp_path}/none.txt" in proc.stderr


def test_a_calibration_sweep_runs_each_uncalibrated_cell_once(tmp_path):
    text = tmp_path / "mine.txt"
    text.write_text((Path(__file__).parents[1] / "runner" / "data" / "calibration.txt").read_text()[:20000])
    proc = run_runner(["-m", "format=gguf", "precision=q4_0", "method=none", "calibration=default,file",
                       f"calibration.file={text}", *NO_FID], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    df = pd.read_csv(sweep_dirs(tmp_path)[0] / "matrix.csv")
    assert list(df.status) == ["ok", "skipped"]
    assert df.reason[1] == "the same cell as with calibration=default: method 'none' uses no calibration data"


def test_a_dataset_as_calibration_text(tmp_path):
    """calibration=dataset: a datasets-loadable folder (offline), its text column's first rows written once into
    the store; the cell records calibration=dataset and the imatrix is its own."""
    folder = tmp_path / "calib-ds"
    folder.mkdir()
    paragraphs = [p for p in (Path(__file__).parents[1] / "runner" / "data" / "calibration.txt").read_text().split("\n\n")
                  if p.strip()]
    (folder / "train.jsonl").write_text("".join(json.dumps({"text": p, "n": i}) + "\n" for i, p in enumerate(paragraphs)))
    args = ["format=gguf", "precision=q4_k_m", "method=imatrix", "calibration=dataset",
            f"calibration.dataset={folder}", "calibration.rows=60", *NO_FID]
    proc = run_runner(args, tmp_path, env={"HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (rec,) = [read_cell_record(p) for p in (tmp_path / "runs").glob("*/result.json")]
    assert rec.status == "ok" and rec.cell.calibration == "dataset"
    (entry,) = [d for d in (tmp_path / "store" / "calibration").iterdir() if (d / "manifest.json").is_file()]
    text = (entry / "calibration.txt").read_text()
    assert text.startswith(paragraphs[0]) and text.count("\n\n") == 59  # the first 60 rows
    bad = run_runner([*args[:-len(NO_FID)], "calibration.column=body", *NO_FID], tmp_path / "bad",
                     env={"HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert bad.returncode == 1 and "calibration.column='body': the dataset has text, n" in bad.stdout + bad.stderr
