"""MLX's calibrated methods (`method=awq|gptq|dwq|dynamic`: mlx-lm's own quantizers on the calibration text) and the
MLX precisions beyond plain 4/8 bits (3bit, mixed recipes, mxfp4 / nvfp4 / mxfp8) on the tiny model, real engine.

Each method's build differs from the plain quantization, is cached, records its method, settings and calibration
text; what mlx-lm cannot make is skipped with its reason; bits/weight are measured from the saved weights.

The method settings are cut down (`SMALL`: 8 samples of 64 tokens, AWQ on a 4-point grid, DWQ with 4 steps at a
learning rate of 1e-5: on the tiny model 1e-4 raised DWQ's validation loss, 1e-5 lowered it, mlx-lm's 1e-6 barely
moved it in so few steps) so the whole file takes ~3 min on 2 cores. mlx-lm's defaults are far slower on a CPU, even
for the tiny model (MLX's CPU matmul ran at ~2 GFLOP/s here; AWQ with its defaults did not finish in 25 min):
`benchmarks/mlx_methods.py --tiny` runs the issue's sweep with them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import FAST, REPO, run_runner, sweep_dirs
from runner.backends.base import safetensors_data_bytes
from runner.records import read_cell_record

METHODS = ("awq", "gptq", "dwq", "dynamic")
# `++`: a key belongs to some methods' configs only (none has no samples); the others carry it unused (in no key).
SMALL = ["++method.num_samples=8", "++method.sequence_length=64", "++method.awq.n_grid=4",
         "++method.dwq.valid_samples=4", "++method.dwq.batch_size=2", "++method.dwq.learning_rate=1e-5"]
PRECISIONS = "fp16,4bit,3bit,mixed_4_6,mxfp4,nvfp4,mxfp8,8bit"
# fidelity against the MLX fp16 build: no GGUF conversion needed for an MLX-only sweep
BASE = [a for a in FAST if not a.startswith("generation.max_tokens=")]
FID = [*BASE, "generation.max_tokens=4", "baseline=mlx_fp16"]
NO_FID = [*BASE, "generation.max_tokens=1", "fidelity.enabled=false"]
CALIBRATION = REPO / "runner" / "data" / "calibration.txt"


def builds(root: Path, kind: str = "mlx") -> int:
    path = root / "store" / "builds.jsonl"
    return sum(json.loads(line)["kind"] == kind for line in path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Every MLX precision × none and the four methods: ok or skipped with its reason."""
    root = tmp_path_factory.mktemp("mlx-methods")
    proc = run_runner(["-m", "format=mlx", f"precision={PRECISIONS}", "method=none,awq,gptq,dwq,dynamic",
                       *SMALL, *FID], root, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = sweep_dirs(root)
    records = {(r.cell.precision, r.cell.method): r for r in map(read_cell_record, path.glob("*/result.json"))}
    return root, path, pd.read_csv(path / "matrix.csv"), records


def tensors(artifact_path: str) -> dict[str, np.ndarray]:
    import mlx.core as mx

    out = {}
    for f in sorted(Path(artifact_path).glob("*.safetensors")):
        out.update({k: np.array(v.astype(mx.float32) if mx.issubdtype(v.dtype, mx.floating) else v)
                    for k, v in mx.load(str(f)).items()})
    return out


def test_every_cell_is_ok_or_skipped_with_its_reason(sweep):
    _, path, df, _ = sweep
    assert set(df.status) == {"ok", "skipped"}, df[df.status == "failed"][["precision", "method", "reason"]]
    reasons = {(r.precision, r.method): r.reason for r in df.itertuples() if r.status == "skipped"}
    ok = {(r.precision, r.method) for r in df.itertuples() if r.status == "ok"}
    assert ok == {*((p, "none") for p in PRECISIONS.split(",")),
                  ("4bit", "awq"), ("3bit", "awq"), ("8bit", "awq"), ("4bit", "gptq"), ("8bit", "gptq"),
                  ("4bit", "dwq"), ("3bit", "dwq"), ("mixed_4_6", "dwq"), ("4bit", "dynamic"), ("3bit", "dynamic")}
    for m in METHODS:
        assert "keeps the weights in floating point" in reasons[("fp16", m)]
        for mode in ("mxfp4", "nvfp4", "mxfp8"):
            assert f"precision {mode!r} is mode {mode}" in reasons[(mode, m)]
    assert reasons[("3bit", "gptq")] == "mlx-lm's gptq packs 2, 4, 8 bits only: precision '3bit' has 3"
    assert "cannot follow the mixed recipe of precision 'mixed_4_6'" in reasons[("mixed_4_6", "awq")]
    assert "cannot follow the mixed recipe" in reasons[("mixed_4_6", "gptq")]
    assert "is itself a mixed-bit allocation" in reasons[("mixed_4_6", "dynamic")]
    assert "trains layers below 8 bits only" in reasons[("8bit", "dwq")]
    assert "method.dynamic.high_bits=5 is not above precision '8bit'" in reasons[("8bit", "dynamic")]
    assert "| mlx 4bit+awq" in (path / "matrix.md").read_text()


def test_each_method_builds_other_weights_than_plain_quantization(sweep):
    _, _, df, records = sweep
    plain = tensors(records[("4bit", "none")].artifact.path)
    for m in METHODS:
        built = tensors(records[("4bit", m)].artifact.path)
        changed = [k for k in plain if k not in built or plain[k].shape != built[k].shape
                   or not np.array_equal(plain[k], built[k])]
        assert changed, f"{m}: the same weights as plain 4bit"
    # what each changes: GPTQ the rounding of the same layout, DWQ the scales and biases only, dynamic the bits of
    # some layers (the keys' shapes), AWQ the norms it fused scales into
    gptq = tensors(records[("4bit", "gptq")].artifact.path)
    assert not np.array_equal(gptq["model.layers.0.mlp.down_proj.weight"], plain["model.layers.0.mlp.down_proj.weight"])
    dwq = tensors(records[("4bit", "dwq")].artifact.path)  # the same packed weights, trained scales and biases
    assert all(np.array_equal(dwq[k], plain[k]) for k in plain if plain[k].dtype == np.uint32)
    assert any(not np.array_equal(dwq[k], plain[k]) for k in plain if k.endswith((".scales", ".biases")))
    awq = tensors(records[("4bit", "awq")].artifact.path)
    norm = "model.layers.0.input_layernorm.weight"
    assert not np.array_equal(awq[norm], plain[norm])
    # every calibrated build is scored against the same baseline, and differs from the plain build's score
    row = {(r.precision, r.method): r for r in df.itertuples()}
    for m in METHODS:
        assert row[("4bit", m)].kld_mean > 0 and row[("4bit", m)].kld_mean != row[("4bit", "none")].kld_mean


def test_records_name_the_method_its_settings_and_the_calibration_text(sweep):
    _, _, df, records = sweep
    sha = hashlib.sha256(CALIBRATION.read_bytes()).hexdigest()
    for m in METHODS:
        rec = records[("4bit", m)]
        assert rec.cell.method == m and rec.cell.calibration == "default"
        params = rec.artifact.params
        assert params["method"] == m and params["calibration"] == sha and params["compute_dtype"] == "float32"
        assert params[m]["num_samples"] == 8 and params[m]["sequence_length"] == 64 and params[m]["seed"] == 123
        assert {"bits": 4, "group_size": 64}.items() <= params.items()
        assert any("computed in float32" in w for w in rec.artifact.warnings), rec.artifact.warnings
        assert rec.runtime.compute_dtype == records[("4bit", "none")].runtime.compute_dtype  # one MLX session
    assert records[("4bit", "awq")].artifact.params["awq"]["n_grid"] == 4
    assert "awq" not in records[("4bit", "gptq")].artifact.params  # another method's settings stay out of the key
    plain = records[("4bit", "none")]
    assert plain.cell.calibration == "none" and "method" not in plain.artifact.params
    # what a method adds beyond the precision is in the record's warnings (matrix: quant_notes)
    assert any("embedding" in w and "4 bits, group 32" in w for w in records[("4bit", "awq")].artifact.warnings)
    assert any("model.embed_tokens" in w for w in records[("4bit", "gptq")].artifact.warnings)
    assert any("4 Adam steps trained the quantization scales and biases and the weights of 9 norms" in w
               for w in records[("4bit", "dwq")].artifact.warnings)  # mlx-lm's dwq trains the norms too
    assert any(w.startswith("dynamic: ") and "layers at 5 bits" in w
               for w in records[("4bit", "dynamic")].artifact.warnings)
    row = {(r.precision, r.method): r for r in df.itertuples()}
    assert row[("4bit", "awq")].calibration == "default" and "embedding" in row[("4bit", "awq")].quant_notes


def test_bits_per_weight_are_measured_from_the_saved_weights(sweep):
    _, _, df, records = sweep
    bpw = {}
    for key, rec in records.items():
        if rec.status != "ok":
            continue
        saved = sum(safetensors_data_bytes(p) for p in Path(rec.artifact.path).glob("*.safetensors"))
        assert rec.artifact.bits_per_weight == pytest.approx(8 * saved / rec.source.n_params)
        bpw[key] = rec.artifact.bits_per_weight
    # 3 + 32/64 < 4 + 8/32 (E8M0 scale per 32) < 4 + 32/64 (f16 scale and bias per 64) < the mixed recipe's 6-bit
    # layers < 8 + 8/32 < 8 + 32/64 < 16; nvfp4 (an E4M3 scale per 16) weighs what 4bit does
    assert bpw[("3bit", "none")] < bpw[("mxfp4", "none")] < bpw[("4bit", "none")] < bpw[("mixed_4_6", "none")] \
        < bpw[("mxfp8", "none")] < bpw[("8bit", "none")] < bpw[("fp16", "none")]
    assert bpw[("mxfp4", "none")] < bpw[("nvfp4", "none")] < bpw[("mixed_4_6", "none")]
    # dynamic: the bits it achieved (some layers at 5 bits), not the 4 asked; GPTQ: its 6-bit fallback embedding
    assert bpw[("4bit", "none")] < bpw[("4bit", "dynamic")] < bpw[("8bit", "none")]
    assert bpw[("4bit", "gptq")] > bpw[("4bit", "none")]
    assert bpw[("4bit", "dwq")] == bpw[("4bit", "none")]  # trained scales, same layout
    # the fp4/fp8 modes and the mixed recipes are quantized (a skipped layer would be reported)
    for p in ("mxfp4", "nvfp4", "mxfp8", "mixed_4_6", "3bit"):
        assert not any("not quantized" in w for w in records[(p, "none")].artifact.warnings)
        assert records[(p, "none")].fidelity.kld_mean > 0
    row = {(r.precision, r.method): r for r in df.itertuples()}
    assert row[("mxfp4", "none")].kld_mean > row[("mxfp8", "none")].kld_mean


def test_a_rerun_is_a_cache_hit_and_settings_or_text_change_the_key(sweep, tmp_path):
    root, _, _, _ = sweep
    before = builds(root)
    again = run_runner(["-m", "format=mlx", "precision=4bit", "method=awq,gptq,dwq,dynamic", *SMALL, *NO_FID], root)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert builds(root) == before
    recs = [read_cell_record(p) for p in sweep_dirs(root)[-1].glob("*/result.json")]
    assert len(recs) == 4 and all(r.status == "ok" and r.artifact.cache_hit for r in recs)
    # a method parameter, and another calibration text, are each a new build
    other = run_runner(["format=mlx", "precision=4bit", "method=gptq", *SMALL, "method.gptq.fallback_bits=8",
                        *NO_FID], root)
    assert other.returncode == 0 and builds(root) == before + 1, other.stderr[-2000:]
    text = tmp_path / "mine.txt"
    text.write_text(CALIBRATION.read_text()[:12000])
    calibrated = run_runner(["format=mlx", "precision=4bit", "method=gptq", *SMALL, "calibration=file",
                             f"calibration.file={text}", *NO_FID], root)
    assert calibrated.returncode == 0 and builds(root) == before + 2, calibrated.stderr[-2000:]
    (rec,) = [read_cell_record(p) for p in sorted((root / "runs").iterdir())[-1].glob("result.json")]
    assert rec.cell.calibration == "file"
    assert rec.artifact.params["calibration"] == hashlib.sha256(text.read_bytes()).hexdigest()


def test_dynamic_records_the_bits_it_achieved_and_a_target_at_the_floor(sweep):
    """mlx-lm #1758: a target_bpw at the low bits' floor gives a (near-)uniform model; the record says so and its
    bits/weight are the saved weights', not the target."""
    root, _, _, records = sweep
    proc = run_runner(["format=mlx", "precision=4bit", "method=dynamic", *SMALL, "method.dynamic.target_bpw=4.5",
                       *NO_FID], root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (rec,) = [read_cell_record(p) for p in sorted((root / "runs").iterdir())[-1].glob("result.json")]
    assert rec.artifact.params["dynamic"]["target_bpw"] == 4.5
    warnings = rec.artifact.warnings
    assert any("mlx-lm #1758" in w and "4-bit floor of 4.512" in w for w in warnings), warnings
    plain, to_five = records[("4bit", "none")].artifact, records[("4bit", "dynamic")].artifact
    assert plain.bits_per_weight <= rec.artifact.bits_per_weight < to_five.bits_per_weight


def test_the_precisions_dtype_sets_the_saved_scales_with_or_without_a_method(sweep):
    """`precision.mlx.dtype` is mlx_lm.convert's --dtype for a plain build and a method's build alike (a bfloat16
    checkpoint's 4.5 bits/weight); a dtype convert does not know is the cell's error, naming the key."""
    from runner.backends.mlx import weights_dtype

    root, _, _, records = sweep
    proc = run_runner(["-m", "format=mlx", "precision=4bit", "method=none,gptq", *SMALL,
                       "++precision.mlx.dtype=bfloat16", *NO_FID], root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    recs = {r.cell.method: r for r in map(read_cell_record, sweep_dirs(root)[-1].glob("*/result.json"))}
    for method in ("none", "gptq"):  # the tiny model is a float16 checkpoint: its own builds keep float16 scales
        art, own = recs[method].artifact, records[("4bit", method)].artifact
        assert (weights_dtype(Path(art.path)), weights_dtype(Path(own.path))) == ("bfloat16", "float16")
        assert art.params["dtype"] == "bfloat16" and art.path != own.path
        assert art.bits_per_weight == pytest.approx(own.bits_per_weight)  # 2-byte scales and biases either way
    bad = run_runner(["format=mlx", "precision=4bit", "++precision.mlx.dtype=float8", *NO_FID], root)
    (rec,) = [read_cell_record(p) for p in sorted((root / "runs").iterdir())[-1].glob("result.json")]
    assert rec.status == "failed" and "precision.mlx.dtype must be one of float16, bfloat16, float32, got 'float8'" \
        in rec.reason, (rec.reason, bad.stderr[-2000:])


def test_too_little_calibration_text_for_dwq_fails_the_cell_with_its_reason(tmp_path):
    text = tmp_path / "short.txt"
    text.write_text(CALIBRATION.read_text()[:300])
    proc = run_runner(["format=mlx", "precision=4bit", "method=dwq", *SMALL, "calibration=file",
                       f"calibration.file={text}", *NO_FID], tmp_path)
    (rec,) = [read_cell_record(p) for p in (tmp_path / "runs").glob("*/result.json")]
    assert rec.status == "failed" and "fewer than two batches" in rec.reason, (rec.reason, proc.stderr[-2000:])


def test_skip_reasons_follow_the_config_alone():
    """`mlx_methods.unsupported` over every MLX precision in conf/ and the four methods (no engine)."""
    from runner.backends.mlx_methods import unsupported
    from runner.cell import load_option

    runs = {}
    for f in sorted((REPO / "conf" / "precision").glob("*.yaml")):
        p = load_option("precision", f.stem)
        mlx = p.get("mlx") or {}
        if "mlx" not in (p.get("formats") or []) or not (mlx.get("bits") or mlx.get("recipe")):
            continue
        for m in METHODS:
            runs[(f.stem, m)] = unsupported(load_option("method", m), p) is None
    assert {k for k, v in runs.items() if v} == {
        ("2bit", "awq"), ("3bit", "awq"), ("4bit", "awq"), ("5bit", "awq"), ("6bit", "awq"), ("8bit", "awq"),
        ("2bit", "gptq"), ("4bit", "gptq"), ("8bit", "gptq"),
        *((p, "dwq") for p in ("2bit", "3bit", "4bit", "5bit", "6bit", "mixed_2_6", "mixed_3_4", "mixed_3_6",
                               "mixed_4_6")),
        ("2bit", "dynamic"), ("3bit", "dynamic"), ("4bit", "dynamic")}
    assert unsupported({"name": "dynamic", "dynamic": {"high_bits": 8}}, load_option("precision", "6bit")) is None
    assert unsupported({"name": "none"}, load_option("precision", "mxfp4")) is None
