"""Fidelity vs FP16 on identical token ids, through both real engines on the tiny model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from conftest import run_runner, sweep_dirs
from runner.cell import DEFAULT_FIDELITY_TEXT
from runner.contract import ChatRenderer
from runner.stages.fidelity import eval_chunks
from runner.records import read_cell_record
from runner.store import Store

FID = ["generation.max_tokens=4", "quiet=true", "fidelity.tokens=1536", "fidelity.chunk_len=256", "fidelity.top_k=64"]
GGUF_ORDER = ["q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0"]


@pytest.fixture(scope="module")
def fidelity_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid")
    proc = run_runner(["-m", "format=gguf,mlx", "precision=fp16,q8_0,q6_k,q5_k_m,q4_k_m,q4_0,8bit,4bit", *FID], root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = sweep_dirs(root)[0]
    return sweep, pd.read_csv(sweep / "matrix.csv").query("status == 'ok'").set_index(["format", "precision"])


def test_baseline_against_itself_is_zero(fidelity_sweep):
    _, df = fidelity_sweep
    ref = df.loc[("gguf", "fp16")]
    assert abs(ref.kld_mean) < 1e-4 and ref.top1_pct == 100.0 and ref.dppl == 0.0


def test_kld_and_top1_rank_the_precisions(fidelity_sweep):
    _, df = fidelity_sweep
    kld = [df.loc[("gguf", p)].kld_mean for p in GGUF_ORDER]
    assert kld == sorted(kld), dict(zip(GGUF_ORDER, kld))
    top1 = [df.loc[("gguf", p)].top1_pct for p in GGUF_ORDER]
    assert top1 == sorted(top1, reverse=True), dict(zip(GGUF_ORDER, top1))
    assert df.loc[("mlx", "8bit")].kld_mean < df.loc[("mlx", "4bit")].kld_mean
    assert df.loc[("mlx", "8bit")].top1_pct >= df.loc[("mlx", "4bit")].top1_pct


def test_cross_engine_noise_floor_is_small(fidelity_sweep):
    """MLX fp16 vs the GGUF F16 baseline: the floor below which differences are engine noise."""
    _, df = fidelity_sweep
    floor = df.loc[("mlx", "fp16")].kld_mean
    assert 0 <= floor < df.loc[("gguf", "q8_0")].kld_mean
    print(f"cross-engine noise floor (KLD mlx fp16 vs gguf F16): {floor:.2e}")


def test_baseline_logprobs_computed_once_per_sweep(fidelity_sweep):
    sweep, _ = fidelity_sweep
    store = Store(sweep.parents[1] / "store")
    assert len(store.builds("fidelity-baseline")) == 1
    assert len(store.builds("fidelity")) == 9  # every ok cell scored once (the baseline too)


def test_records_carry_fidelity_and_answer_agreement(fidelity_sweep):
    sweep, df = fidelity_sweep
    for col in ("kld_mean", "kld_se", "kld_p99", "top1_pct", "ppl", "dppl"):
        assert df[col].notna().all(), col
    # answer agreement compares with the baseline's answers: the baseline itself has none (no self-grading)
    assert df["answer_agreement"].drop(("gguf", "fp16")).notna().all()
    assert pd.isna(df.loc[("gguf", "fp16")].answer_agreement)
    rec = read_cell_record(next(p for p in sweep.glob("*/result.json") if read_cell_record(p).status == "ok"
                                and read_cell_record(p).cell.precision != "fp16"))
    assert rec.fidelity.n_tokens == 6 * 255 and rec.fidelity.baseline == "gguf_fp16"
    assert rec.fidelity.bos_first is False  # the tiny model's tokenizer adds no BOS
    assert all(r.agreement and set(r.agreement) >= {"exact", "token_similarity"} for r in rec.results)


def test_baseline_built_on_demand_when_excluded_from_the_sweep(tmp_path):
    proc = run_runner(["format=mlx", "precision=4bit", *FID], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = (tmp_path / "runs").glob("*/result.json")
    rec = read_cell_record(path)
    assert rec.fidelity.kld_mean > 0 and rec.fidelity.baseline == "gguf_fp16"


def test_mlx_baseline_option(tmp_path):
    proc = run_runner(["format=gguf", "precision=q4_0", "baseline=mlx_fp16", *FID], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = (tmp_path / "runs").glob("*/result.json")
    assert read_cell_record(path).fidelity.baseline == "mlx_fp16"


def test_eval_text_shorter_than_a_chunk(tmp_path):
    text = tmp_path / "short.txt"
    text.write_text("just a few words")
    proc = run_runner(["fidelity.chunk_len=256", f"fidelity.text={text}", "generation.max_tokens=4", "quiet=true"],
                      tmp_path)
    assert proc.returncode == 1
    assert "shorter than one chunk" in proc.stdout + proc.stderr and "short.txt" in proc.stdout + proc.stderr


def test_top_k_kld_is_a_lower_bound_of_the_exact_one(tmp_path):
    """`fidelity.top_k=all` keeps the full vocabulary (exact KLD); top-K plus a tail bucket never exceeds it."""
    klds = {}
    for k in ("16", "all"):
        proc = run_runner(["format=gguf", "precision=q4_0", *FID, f"fidelity.top_k={k}", f"hydra.run.dir={tmp_path}/{k}"],
                          tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        rec = read_cell_record(tmp_path / k / "result.json")
        assert rec.fidelity.top_k == (None if k == "all" else int(k))
        klds[k] = rec.fidelity.kld_mean
        assert str(pd.read_csv(tmp_path / k / "matrix.csv").kld_top_k[0]) == k
    assert 0 < klds["16"] <= klds["all"] * (1 + 1e-6)


def test_bad_top_k_is_one_clear_error(tmp_path):
    proc = run_runner(["format=gguf", "precision=q4_0", *FID, "fidelity.top_k=most"], tmp_path)
    assert proc.returncode == 2
    assert "fidelity.top_k must be a positive integer or all, got 'most'" in proc.stderr
    assert not list(tmp_path.glob("runs/*/result.json")) and not (tmp_path / "store").exists()  # before any work


@pytest.mark.parametrize("settings,message", [
    (["fidelity.tokens=256", "fidelity.chunk_len=512"], "fidelity.tokens=256 is shorter than one chunk (fidelity.chunk_len=512)"),
    (["fidelity.chunk_len=1"], "fidelity.chunk_len must be an integer >= 2, got 1"),
    (["fidelity.text=/nowhere/eval.txt"], "fidelity.text: file not found: /nowhere/eval.txt"),
    (["baseline=gguf_q9"], "baseline='gguf_q9'"),
])
def test_fidelity_settings_invalid_on_their_face_stop_the_sweep_before_any_cell_runs(tmp_path, settings, message):
    proc = run_runner(["-m", "format=gguf,mlx", "precision=fp16,q4_0,4bit", "generation.max_tokens=4", "quiet=true",
                       *settings], tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and "nothing was run" in proc.stderr, proc.stderr
    assert not list(tmp_path.glob("multirun/*/*/result.json")) and not (tmp_path / "store").exists()


def bos_variant(model_dir: Path, root: Path) -> Path:
    """The tiny model with a tokenizer that puts BOS (<s>) before every text, as Gemma's and Llama's do."""
    out = shutil.copytree(model_dir, root / "tiny-bos")
    config = json.loads((out / "tokenizer_config.json").read_text())
    (out / "tokenizer_config.json").write_text(json.dumps({**config, "add_bos_token": True}))
    tok = json.loads((out / "tokenizer.json").read_text())
    bos = {"SpecialToken": {"id": "<s>", "type_id": 0}}
    tok["post_processor"] = {"type": "TemplateProcessing", "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
                             "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                             "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
    (out / "tokenizer.json").write_text(json.dumps(tok))
    return out


def test_every_chunk_starts_with_bos_where_the_tokenizer_adds_one(tiny_model_dir, tmp_path):
    """llama-perplexity's protocol: the text tokenized with its BOS, the first token of every chunk replaced by BOS."""
    cfg = {"tokens": 0, "chunk_len": 64, "text": None}
    plain_renderer = ChatRenderer(tiny_model_dir, False)
    stream = plain_renderer.encode(DEFAULT_FIDELITY_TEXT.read_text())
    plain = eval_chunks(cfg, plain_renderer)
    assert not plain.bos_first and plain.chunks[1] == stream[64:128]  # no BOS: unchanged

    renderer = ChatRenderer(bos_variant(tiny_model_dir, tmp_path), False)
    bos = renderer.bos_id()
    assert bos == 1 and renderer.encode(DEFAULT_FIDELITY_TEXT.read_text()) == stream
    text = eval_chunks(cfg, renderer)
    assert text.bos_first and all(c[0] == bos and len(c) == 64 for c in text.chunks)
    with_bos = [bos, *stream]
    assert text.chunks[0] == with_bos[:64] and text.chunks[1] == [bos, *with_bos[65:128]]
    assert text.sha != plain.sha  # other token ids: other fidelity cache keys
