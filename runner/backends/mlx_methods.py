"""MLX's calibrated methods (`method=awq|gptq|dwq|dynamic`, format=mlx): mlx-lm's own quantizers (mlx_lm/quant/),
called as Python functions on the cell's calibration text instead of their downloaders.

mlx-lm's command-line tools fetch their calibration text over the network (quant/utils.load_data: urllib, no
offline fallback; DWQ: `datasets`). Here the text is the `calibration` group's (runner/calibration.py), tokenized
with the model's tokenizer of record and cut into `sequence_length`-token samples — consecutive, the last partial
one dropped, each starting with the model's BOS where its tokenizer adds one (as llama-imatrix does) — of which
`num_samples` are drawn with `seed`. The methods then run as mlx-lm wrote them:

* `gptq` — quant/gptq.py `gptq_quantize(model, data, bits, group_size, fallback_bits, fallback_group_size,
  batch_size)`; 2, 4 or 8 bits only (its packer asserts it).
* `awq` — quant/awq.py `awq_quantize(model, data, AWQ_MODEL_CONFIGS[model_type], group_size, bits, embed_group_size,
  embed_bits, n_grid)`, then its `update_config`.
* `dwq` — the plain quantization (`quantize_model`, the precision's bits, group size or mixed recipe) as student,
  quant/dwq.py `dwq_quantize(student, target_fn=the float model, Adam(learning_rate), train, valid, batch_size,
  sequence_length, seed, dtype, gradient_checkpoint, temperature)`: `num_samples` training samples, then
  `valid_samples` validation ones (mlx-lm's load_data order). It trains what mlx-lm leaves unfrozen: the scales and
  biases of the affine layers below 8 bits, and the norms' weights.
* `dynamic` — quant/dynamic_quant.py `estimate_sensitivities` and `estimate_threshold`, then `quantize_model` with
  the resulting predicate, as its `main` does.

Every method computes in the resolved compute dtype (`format.compute_dtype`: `auto` is float32 on CPU, where float16
runs slower, and the model's dtype on a GPU) and saves in the dtype `mlx_lm.convert` would (the precision's
`mlx.dtype` where it sets one, else the model config's `torch_dtype`), so a calibrated build differs from the plain
one by its method only, loads through the same `MLXSession` and is scored the same. What a method changes beyond the
precision (AWQ's embedding bits and fused scales, GPTQ's fallback layers, DWQ's trained scales and norms, the layers
dynamic gave the high bits, the dtype computed in) is in the artifact's warnings.

All four run on CPU in mlx 0.32.4 / mlx-lm 0.32.2 (measured); none needs Metal. They are slow there: MLX's Linux CPU
matmul ran at ~2 GFLOP/s on one thread (2026-11-30, 2 shared cores), and with mlx-lm's default settings the tiny
model's 4-bit builds took GPTQ 96 s, dynamic 202 s, DWQ 233 s, AWQ over 25 min (not finished: its 20-point search
runs every block over all 51 x 512 calibration tokens); benchmarks/mlx_methods.py times them on a real model.
`unsupported` names the precision x method combinations mlx-lm cannot make (config alone decides them: cells are
skipped with the reason).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

METHODS = ("awq", "gptq", "dwq", "dynamic")
CODE_VERSION = 2  # bump when sampling or a method's call changes what is built
CONVERSION_DTYPES = ("float16", "bfloat16", "float32")  # mlx_lm.convert's MODEL_CONVERSION_DTYPES
SHARED_KEYS = {"num_samples": -1, "sequence_length": 512, "seed": 123}  # top-level keys of each method's config
GPTQ_BITS = (2, 4, 8)


def unsupported(method: dict[str, Any], precision: dict[str, Any]) -> str | None:
    """Why mlx-lm's `method` cannot make this quantized MLX precision (a skip reason), or None."""
    name = str(method.get("name"))
    if name not in METHODS:
        return None
    mlx = precision.get("mlx") or {}
    pname = precision.get("name")
    mode = str(mlx.get("mode") or "affine")
    if mode != "affine":
        what = {"awq": "searches scales for affine quantization (mx.quantize mode=affine)",
                "gptq": "rounds to affine quantization (scales and biases)",
                "dwq": "trains the scales and biases of affine layers only",
                "dynamic": "allocates bits between affine quantizations"}[name]
        return f"mlx-lm's {name} {what}: precision {pname!r} is mode {mode}"
    recipe = mlx.get("recipe")
    if recipe and name != "dwq":
        what = {"awq": "quantizes every block at one bit width (awq_quantize bits)",
                "gptq": "quantizes every Linear at one bit width (gptq_quantize bits)",
                "dynamic": "is itself a mixed-bit allocation (low and high bits by sensitivity)"}[name]
        return (f"mlx-lm's {name} {what}: it cannot follow the mixed recipe of precision {pname!r} "
                f"(use a uniform precision such as 4bit, or method=dwq)")
    bits = int(mlx.get("bits") or 0)
    if name == "gptq" and not recipe and bits not in GPTQ_BITS:
        return f"mlx-lm's gptq packs {', '.join(map(str, GPTQ_BITS))} bits only: precision {pname!r} has {bits}"
    if name == "dwq" and not recipe and bits >= 8:
        return f"mlx-lm's dwq trains layers below 8 bits only: precision {pname!r} has {bits} (nothing to train)"
    if name == "dynamic":
        high = int((method.get("dynamic") or {}).get("high_bits", 5))
        if high <= bits:
            return (f"method.dynamic.high_bits={high} is not above precision {pname!r}'s {bits} bits "
                    "(dynamic gives sensitive layers the high bits)")
    return None


def settings(method: dict[str, Any]) -> dict[str, Any]:
    """The method's parameters as they go into the artifact key and record: the shared sampling keys and its own."""
    name = str(method["name"])
    out = {k: method.get(k, default) for k, default in SHARED_KEYS.items()}
    out = {"num_samples": int(out["num_samples"]), "sequence_length": int(out["sequence_length"]),
           "seed": int(out["seed"])}
    if out["sequence_length"] < 2:
        raise ValueError(f"method.sequence_length must be >= 2, got {out['sequence_length']}")
    return {**out, **dict(method.get(name) or {})}


def compute_dtype(format_cfg: dict[str, Any], dev: str) -> str:
    """The dtype a method computes in: `auto` → float32 on CPU, the model's own (`model`) on a GPU."""
    requested = str(format_cfg.get("compute_dtype", "auto"))
    if requested == "auto":
        return "float32" if dev == "cpu" else "model"
    if requested not in ("model", *CONVERSION_DTYPES):
        raise ValueError(f"format.compute_dtype must be auto, model or one of {', '.join(CONVERSION_DTYPES)}, "
                         f"got {requested!r}")
    return requested


def calibration_samples(encode: Any, bos: int | None, text: str, num_samples: int, sequence_length: int,
                        seed: int) -> tuple[np.ndarray, int]:
    """`num_samples` (≤ 0: all) samples of `sequence_length` tokens from the text, and how many the text gives.

    Consecutive chunks, the last partial one dropped; BOS first in each where the tokenizer adds one (the text is
    tokenized with its BOS and each later chunk's first token replaced, as llama-imatrix and the fidelity stage
    do); drawn in a permutation by `seed` (mlx-lm's load_data draws random non-overlapping chunks too).
    """
    ids = ([bos] if bos is not None else []) + list(encode(text))
    n = len(ids) // sequence_length
    if n == 0:
        raise ValueError(f"the calibration text has {len(ids)} tokens, fewer than one sample "
                         f"(method.sequence_length={sequence_length})")
    chunks = np.asarray(ids[:n * sequence_length], dtype=np.int32).reshape(n, sequence_length)
    if bos is not None:
        chunks[:, 0] = bos
    order = np.random.RandomState(seed).permutation(n)
    if num_samples > 0:
        order = order[:num_samples]
    return chunks[order], n


@dataclass
class Built:
    """What a method build adds to the artifact's manifest."""

    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


def build(name: str, cfg: dict[str, Any], precision: dict[str, Any], model_dir: Path, encode: Any,
          bos: int | None, text: str, out: Path, compute: str) -> Built:
    """Load the float model from `model_dir`, run mlx-lm's `name` on the calibration text, save to `out`."""
    import mlx.core as mx
    from mlx_lm.utils import compute_bits_per_weight, load, save

    t0 = time.perf_counter()
    model, tokenizer, config = load(str(model_dir), return_config=True, lazy=True)
    save_dtype = _conversion_dtype(model, config, (precision.get("mlx") or {}).get("dtype"))
    compute_dt = save_dtype if compute == "model" else getattr(mx, compute)
    drawn = int(cfg["num_samples"])
    if name == "dwq" and drawn > 0:  # DWQ's validation samples come after its training ones (mlx-lm's load_data)
        drawn += int(cfg.get("valid_samples", 32))
    data, available = calibration_samples(encode, bos, text, drawn, int(cfg["sequence_length"]), int(cfg["seed"]))
    built = Built(details={"samples": int(data.shape[0]), "samples_available": available,
                           "sequence_length": int(data.shape[1]), "calibration_tokens": int(data.size),
                           "compute_dtype": _name(compute_dt), "saved_dtype": _name(save_dtype)})
    if 0 < int(cfg["num_samples"]) and available < int(cfg["num_samples"]) and name != "dwq":
        built.warnings.append(f"{name}: the calibration text gives {available} samples of {data.shape[1]} tokens, "
                              f"fewer than method.num_samples={cfg['num_samples']}: all {available} used")
    mx.random.seed(int(cfg["seed"]))
    log_text = io.StringIO()  # mlx-lm's prints and tqdm bars: the build log, not the console
    run = {"gptq": _gptq, "awq": _awq, "dwq": _dwq, "dynamic": _dynamic}[name]
    with contextlib.redirect_stdout(log_text), contextlib.redirect_stderr(log_text):
        model, config = run(model, config, data, cfg, precision.get("mlx") or {}, save_dtype, compute_dt, built)
    _cast(model, save_dtype)
    mx.eval(model.parameters())
    built.details["mlx_bits_per_weight"] = round(float(compute_bits_per_weight(model)), 4)
    if _name(compute_dt) != _name(save_dtype):
        built.warnings.append(f"{name}: computed in {_name(compute_dt)} (format.compute_dtype), saved in "
                              f"{_name(save_dtype)} like mlx_lm.convert")
    with contextlib.redirect_stdout(io.StringIO()):
        save(str(out), str(model_dir), model, tokenizer, config)
    (out.parent / f"{name}.log").write_text(_clean_log(log_text.getvalue()), encoding="utf-8")
    built.details["method_s"] = round(time.perf_counter() - t0, 2)
    return built


def _gptq(model: Any, config: dict, data: np.ndarray, cfg: dict, q: dict, save_dtype: Any, compute_dt: Any,
          built: Built) -> tuple[Any, dict]:
    import mlx.core as mx
    from mlx_lm.quant.gptq import gptq_quantize

    bits, group_size = int(q["bits"]), int(q.get("group_size") or 64)
    _cast(model, compute_dt)
    model, qconfig = gptq_quantize(model, mx.array(data), bits, group_size, int(cfg.get("fallback_bits", 6)),
                                   int(cfg.get("fallback_group_size", 64)), batch_size=int(cfg.get("batch_size", 8)))
    config["quantization"] = qconfig
    fallback = sorted(k for k, v in qconfig.items() if isinstance(v, dict))
    built.details["fallback_layers"] = fallback
    if fallback:
        built.warnings.append(f"gptq: {len(fallback)} layer(s) that are not Linear quantized plainly at "
                              f"{cfg.get('fallback_bits', 6)} bits, group {cfg.get('fallback_group_size', 64)} "
                              f"(method.gptq.fallback_bits): {', '.join(fallback[:5])}")
    return model, config


def _awq(model: Any, config: dict, data: np.ndarray, cfg: dict, q: dict, save_dtype: Any, compute_dt: Any,
         built: Built) -> tuple[Any, dict]:
    import mlx.core as mx
    from mlx_lm.quant.awq import AWQ_MODEL_CONFIGS, awq_quantize, update_config

    model_type = str(config.get("model_type"))
    awq_config = AWQ_MODEL_CONFIGS.get(model_type)
    if awq_config is None:
        raise ValueError(f"method=awq: mlx-lm's AWQ has no config for model_type {model_type!r} (it knows "
                         f"{', '.join(sorted(AWQ_MODEL_CONFIGS))})")
    bits, group_size = int(q["bits"]), int(q.get("group_size") or 64)
    embed_bits, embed_group = int(cfg.get("embed_bits", 4)), int(cfg.get("embed_group_size", 32))
    _cast(model, compute_dt)
    out = io.StringIO()
    with _tee(out):
        awq_quantize(model, mx.array(data), awq_config, group_size=group_size, bits=bits,
                     embed_group_size=embed_group, embed_bits=embed_bits, n_grid=int(cfg.get("n_grid", 20)))
    text = out.getvalue()
    reductions = [float(x) for x in re.findall(r"Loss reduction: ([0-9.eE+-]+)", text)]
    fallbacks = text.count("falling back to original weights")
    built.details.update(block_loss_ratio=[round(r, 4) for r in reductions], blocks_fell_back=fallbacks)
    built.warnings.append(f"awq: the embedding{' and lm_head' if 'lm_head' in model else ''} quantized at "
                          f"{embed_bits} bits, group {embed_group} (method.awq.embed_bits/embed_group_size); the "
                          "norms and Linears before the scaled layers carry AWQ's scales (weights differ from the "
                          "source's)")
    if fallbacks:
        built.warnings.append(f"awq: {fallbacks} of {len(reductions)} blocks did not lower their output error and "
                              "were quantized plainly")
    return model, update_config(model, config)


def _dwq(model: Any, config: dict, data: np.ndarray, cfg: dict, q: dict, save_dtype: Any, compute_dt: Any,
         built: Built) -> tuple[Any, dict]:
    import mlx.core as mx
    import mlx.optimizers as optimizers
    from mlx.utils import tree_flatten
    from mlx_lm.quant.dwq import dwq_quantize
    from mlx_lm.utils import quantize_model

    batch = int(cfg.get("batch_size", 4))
    n = len(data)
    asked_valid, asked_train = int(cfg.get("valid_samples", 32)), int(cfg["num_samples"])
    want_train = asked_train if asked_train > 0 else n - asked_valid
    if want_train >= batch and n >= want_train + asked_valid:
        n_train, n_valid = want_train, asked_valid  # mlx-lm's split: train first, then validation
    else:  # a short text: a quarter (at least a batch) validates, the rest trains
        n_valid = min(asked_valid, max(batch, n // 4))
        n_train = n - n_valid if asked_train <= 0 else min(asked_train, n - n_valid)
    train, valid = data[:n_train], data[n_train:n_train + n_valid]
    if len(train) < batch or len(valid) < batch:
        raise ValueError(f"method=dwq: the calibration text gives {n} samples of {data.shape[1]} tokens: fewer than "
                         f"two batches (method.dwq.batch_size={batch}); use a longer text or a shorter "
                         "method.sequence_length")
    if (n_train, n_valid) != (want_train, asked_valid):
        built.warnings.append(f"dwq: the calibration text gives {n} samples of {data.shape[1]} tokens "
                              f"(asked {asked_train if asked_train > 0 else 'all'} + {asked_valid} validation): "
                              f"{len(train)} train, {len(valid)} validate")
    # The student is the plain quantization (what mlx_lm.convert builds: quantized from the saved dtype), then
    # trained in the compute dtype; the teacher is the float model.
    _cast(model, save_dtype)
    mx.eval(model.parameters())
    student = copy.deepcopy(model)
    recipe = q.get("recipe")
    group_size = int(q.get("group_size") or 64)
    predicate = None
    if recipe:
        from mlx_lm.convert import mixed_quant_predicate_builder

        predicate = mixed_quant_predicate_builder(recipe, student, group_size)
    student, config = quantize_model(student, config, group_size, None if recipe else int(q["bits"]),
                                     quant_predicate=predicate)
    _cast(student, compute_dt)
    _cast(model, compute_dt)
    opt = optimizers.Adam(learning_rate=float(cfg.get("learning_rate", 1e-6)), bias_correction=True)
    out = io.StringIO()
    with _tee(out):
        dwq_quantize(student, lambda x, i, split: model(x), opt, [(list(map(int, r)), 0) for r in train],
                     [(list(map(int, r)), 0) for r in valid], batch_size=batch,
                     max_seq_length=int(data.shape[1]), seed=int(cfg["seed"]), dtype=compute_dt,
                     gradient_checkpoint=bool(cfg.get("grad_checkpoint", False)),
                     temperature=float(cfg.get("temperature", 2.0)))
    student.eval()
    losses = [float(x) for x in re.findall(r"Validation: it=\d+, loss=([0-9.eE+-]+)", out.getvalue())]
    trainable = re.findall(r"Trainable parameters: ([^\n]+)", out.getvalue())
    # mlx-lm's dwq unfreezes the scales and biases of the affine layers below 8 bits and freezes nothing: the other
    # float parameters (the norms' weights) train too
    trained = [k for k, _ in tree_flatten(student.trainable_parameters())]
    others = sorted({k.rsplit(".", 1)[0] for k in trained if not k.endswith((".scales", ".biases"))})
    if others and all(o.rsplit(".", 1)[-1].endswith("norm") for o in others):
        what = f"the quantization scales and biases and the weights of {len(others)} norms"
    else:
        listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        what = "the quantization scales and biases" + (f" and {len(others)} other float tensors ({listed})"
                                                       if others else "")
    built.details.update(train_samples=len(train), valid_samples=len(valid), steps=len(train) // batch,
                         valid_loss_before=losses[0] if losses else None,
                         valid_loss_after=losses[-1] if losses else None,
                         trainable=trainable[0].strip() if trainable else None, trained_other=others)
    built.warnings.append(f"dwq: {len(train) // batch} Adam steps trained {what} in {_name(compute_dt)}"
                          + (f" (validation KL {losses[0]:.4g} -> {losses[-1]:.4g})" if losses else ""))
    if len(losses) >= 2 and losses[-1] > losses[0]:
        built.warnings.append(f"dwq: the validation loss rose ({losses[0]:.4g} -> {losses[-1]:.4g}): mlx-lm "
                              "warns that quality will likely be degraded")
    return student, config


def _dynamic(model: Any, config: dict, data: np.ndarray, cfg: dict, q: dict, save_dtype: Any, compute_dt: Any,
             built: Built) -> tuple[Any, dict]:
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.quant.dynamic_quant import estimate_sensitivities, estimate_threshold
    from mlx_lm.utils import compute_bits_per_weight, quantize_model

    low_bits, low_group = int(q["bits"]), int(q.get("group_size") or 64)
    high_bits, high_group = int(cfg.get("high_bits", 5)), int(cfg.get("high_group_size", 64))
    target = float(cfg.get("target_bpw", 5.0))
    _cast(model, compute_dt)
    sens = dict(estimate_sensitivities(model, mx.array(data), low_bits, low_group, high_bits, high_group,
                                       batch_size=int(cfg.get("batch_size", 4)),
                                       gradient_accum_dtype=getattr(mx, str(cfg.get("accumulation_dtype", "float32"))),
                                       gradient_checkpoint=False))
    # The threshold's bits/weight are counted on the model as it is saved (mlx-lm's CLI runs in the loaded dtype):
    # counted in float32, scales and biases would weigh twice as much and the target would mean fewer high layers.
    _cast(model, save_dtype)
    mx.eval(model.parameters())
    threshold = estimate_threshold(model, sens, target, low_bits, low_group, high_bits, high_group)
    high = sorted(p for p, s in sens.items() if s > threshold)
    # the floor: every layer at the low bits, counted the same way (float32 scales and biases add 64/group bits)
    floor_model = copy.deepcopy(model)
    nn.quantize(floor_model, group_size=low_group, bits=low_bits,
                class_predicate=lambda _, m: hasattr(m, "to_quantized"))
    floor = float(compute_bits_per_weight(floor_model))
    del floor_model

    def predicate(path: str, module: Any) -> Any:
        if not hasattr(module, "to_quantized"):
            return False
        return {"bits": high_bits, "group_size": high_group} if sens.get(path, -np.inf) > threshold else True

    model, config = quantize_model(model, config, low_group, low_bits, quant_predicate=predicate)
    achieved = float(compute_bits_per_weight(model))
    built.details.update(target_bpw=target, achieved_mlx_bpw=round(achieved, 4), floor_mlx_bpw=round(floor, 4),
                         high_layers=high, layers=len(sens),
                         sensitivities={k: round(float(v), 6) for k, v in sens.items()})
    built.warnings.append(f"dynamic: {len(high)} of {len(sens)} layers at {high_bits} bits (group {high_group}), "
                          f"the rest at {low_bits}: {achieved:.3f} bits/weight by mlx-lm's count for a target of "
                          f"{target:g} (all at {low_bits} bits: {floor:.3f})")
    if target - floor < 0.1 * (high_bits - low_bits):
        built.warnings.append(f"dynamic: method.dynamic.target_bpw={target:g} is {'below' if target < floor else 'at'} "
                              f"the {low_bits}-bit floor of {floor:.3f} bits/weight (scales and biases in "
                              f"{_name(save_dtype)}): {'no layer' if not high else f'only {len(high)} layer(s)'} got "
                              f"the high bits, a near-uniform {low_bits}-bit model (mlx-lm #1758)")
    elif len(high) == len(sens):
        built.warnings.append(f"dynamic: every layer got the high bits: a uniform {high_bits}-bit model")
    return model, config


# --- helpers --------------------------------------------------------------------------------------------------


def _name(dtype: Any) -> str:
    return str(dtype).rsplit(".", 1)[-1]


def _conversion_dtype(model: Any, config: dict, requested: str | None) -> Any:
    """The dtype mlx_lm.convert saves this model in (the precision's `mlx.dtype`, else config torch_dtype /
    text_config dtype), the model cast to it; else the dtype its weights were loaded in."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    dtype = requested or config.get("torch_dtype") or (config.get("text_config") or {}).get("dtype")
    if dtype in CONVERSION_DTYPES:
        dtype = getattr(mx, dtype)
        _cast(model, dtype)
        return dtype
    floats = [v.dtype for _, v in tree_flatten(model.parameters()) if mx.issubdtype(v.dtype, mx.floating)]
    return max(set(floats), key=floats.count) if floats else mx.float32


def _cast(model: Any, dtype: Any) -> None:
    """Cast the floating parameters as mlx_lm.convert does (the model's cast_predicate respected)."""
    import mlx.core as mx
    from mlx.utils import tree_map_with_path

    keep = getattr(model, "cast_predicate", lambda _: True)
    model.update(tree_map_with_path(
        lambda k, v: v.astype(dtype) if keep(k) and mx.issubdtype(v.dtype, mx.floating) and v.dtype != dtype else v,
        model.parameters()))


@contextlib.contextmanager
def _tee(buffer: io.StringIO) -> Any:
    """Copy what is printed (tqdm.write, print) into `buffer` as well, for the values a method only prints."""
    import sys

    class Tee(io.TextIOBase):
        def __init__(self, other: Any):
            self.other = other

        def write(self, s: str) -> int:
            buffer.write(s)
            return self.other.write(s)

        def flush(self) -> None:
            self.other.flush()

    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = Tee(out), Tee(err)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err


def _clean_log(text: str) -> str:
    """The build log without tqdm's redraws: the last state of each bar."""
    lines = []
    for line in text.split("\n"):
        parts = [p for p in line.split("\r") if p.strip()]
        if parts:
            lines.append(parts[-1].rstrip())
    return "\n".join(lines) + "\n"
