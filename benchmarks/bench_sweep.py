"""Seed sweep wall time, first run vs re-run (everything cached), and conversions per sweep.

python benchmarks/bench_sweep.py [extra hydra overrides...]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runner.store import Store

REPO = Path(__file__).resolve().parents[1]


def run(root: Path, extra: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "runner", "-m", "+experiment=seed_matrix", "quiet=true",
                    f"outputs_root={root}", *extra], cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    root = Path(tempfile.mkdtemp())
    extra = sys.argv[1:]
    first = run(root, extra)
    second = run(root, extra)
    store = Store(root / "store")
    print(f"first run  {first:7.1f} s")
    print(f"re-run     {second:7.1f} s   ({100 * second / first:.1f} % of first)")
    print(f"conversions HF->GGUF: {len(store.builds('gguf-base'))}, GGUF quantizations: {len(store.builds('gguf'))}, "
          f"MLX conversions: {len(store.builds('mlx'))}, artifacts built by the re-run: 0 expected")


if __name__ == "__main__":
    main()
