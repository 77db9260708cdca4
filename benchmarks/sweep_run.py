"""Run one `python -m runner -m ...` sweep for a benchmark script (imported as `from sweep_run import run_sweep`)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_sweep(overrides: list[str], root: Path) -> tuple[subprocess.CompletedProcess, float]:
    """The sweep into `outputs_root=root`, from the repo root: its process and wall seconds. Exit 0 (all ok) and 1
    (some cells failed: they are records) go on; anything else (a refused config, a crash) stops the script."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "runner", "-m", *overrides, f"outputs_root={root}"], cwd=REPO,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        sys.exit(proc.returncode)
    return proc, wall


def only_sweep(root: Path) -> Path:
    """The one sweep dir a fresh `root` holds after `run_sweep`."""
    (sweep,) = (root / "multirun").iterdir()
    return sweep
