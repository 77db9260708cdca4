"""Fidelity stage time and peak RSS as the eval text grows (1x, 2x, 4x tokens), one process per size.

python benchmarks/bench_fidelity.py [--base-tokens 2048] [--chunk 512]
Peak RSS should stay bounded by the chunk size, time should grow linearly.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEXT = REPO / "runner" / "data" / "fidelity_eval.txt"


def run(root: Path, text: Path, tokens: int, chunk: int) -> tuple[float, float]:
    subprocess.run([sys.executable, "-m", "runner", "format=gguf", "precision=q4_k_m", "quiet=true",
                    "generation.max_tokens=1", f"fidelity.text={text}", f"fidelity.tokens={tokens}",
                    f"fidelity.chunk_len={chunk}", f"outputs_root={root}"], cwd=REPO, check=True, capture_output=True)
    rec = json.loads(max((root / "runs").glob("*/result.json"), key=lambda p: p.stat().st_mtime).read_text())
    return rec["timings"]["fidelity"], rec["fidelity"]["peak_rss_mb"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-tokens", type=int, default=2048)
    ap.add_argument("--chunk", type=int, default=512)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    text = tmp / "eval.txt"
    text.write_text(TEXT.read_text() * 4)  # long enough for 4x
    base = None
    for mult in (1, 2, 4):
        root = tmp / f"x{mult}"  # fresh store: baseline log-probs and scores are computed, not cached
        seconds, rss = run(root, text, args.base_tokens * mult, args.chunk)
        base = base or seconds
        print(f"{mult}x tokens ({args.base_tokens * mult:6d}): fidelity {seconds:6.2f} s ({seconds / base:.2f}x)  "
              f"peak RSS {rss:7.1f} MB")


if __name__ == "__main__":
    main()
