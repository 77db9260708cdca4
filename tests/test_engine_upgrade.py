"""An engine upgrade invalidates every cached answer and log-prob it computed, the fp16 baseline's included."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import FAST, REPO, sweep_dirs
from runner.records import read_cell_record

# `python -m runner` with the GGUF engine reporting another llama-cpp-python version (an upgrade, simulated)
UPGRADED = """
import runpy
import runner.backends.gguf as gguf
real = gguf.engine
gguf.engine = lambda: {**real(), "llama-cpp-python": "99.0.0"}
runpy.run_module("runner", run_name="__main__", alter_sys=True)
"""


def run(root: Path, upgraded: bool) -> subprocess.CompletedProcess:
    args = ["-m", "format=gguf", "precision=fp16,q4_0", *FAST, f"outputs_root={root}"]
    cmd = [sys.executable, "-c", UPGRADED, *args] if upgraded else [sys.executable, "-m", "runner", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def builds(root: Path, kind: str) -> int:
    lines = (root / "store" / "builds.jsonl").read_text().splitlines()
    return sum(json.loads(line)["kind"] == kind for line in lines)


def test_a_simulated_llama_cpp_upgrade_regenerates_the_baseline_answers_and_log_probs(tmp_path):
    assert run(tmp_path, upgraded=False).returncode == 0
    first = {kind: builds(tmp_path, kind) for kind in ("generations", "fidelity-baseline", "gguf", "gguf-base")}
    assert run(tmp_path, upgraded=False).returncode == 0
    assert {kind: builds(tmp_path, kind) for kind in first} == first  # same engine: everything from the cache

    proc = run(tmp_path, upgraded=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    after = {kind: builds(tmp_path, kind) for kind in first}
    assert after["generations"] == 2 * first["generations"]  # both cells' answers, the fp16 baseline's too
    assert after["fidelity-baseline"] == 2 * first["fidelity-baseline"]
    records = [read_cell_record(p) for p in sweep_dirs(tmp_path)[-1].glob("*/result.json")]
    assert {r.runtime.engine["llama-cpp-python"] for r in records} == {"99.0.0"}
    assert all(r.runtime.engine["llama.cpp"] not in ("", "unknown") for r in records)
    assert not any(r.cache_hit for rec in records for r in rec.results)
