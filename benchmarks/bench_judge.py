"""Judge concurrency: N judgments at concurrency C against the fault server with fixed latency L, no faults.

Ideal wall time is N·L/C; efficiency = ideal / measured (target ≥ 0.8). Run: `python benchmarks/bench_judge.py`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner.judges import make_judge
from runner.judges.base import JudgeItem  # noqa: E402
from runner.store import Store  # noqa: E402
from runner.testing.fault_server import FaultServerProcess  # noqa: E402


def run(base_url: str, n: int, concurrency: int, latency_s: float) -> float:
    judge = make_judge({"name": "openai", "model": "gpt-5-nano", "rubric_version": "v1", "api_key": "sk-bench",
                        "base_url": base_url, "concurrency": concurrency, "timeout_s": 30, "max_retries": 0})
    items = [JudgeItem(f"prompt {i} at C={concurrency}", "bench", f"answer {i}", False, None,
                       f"bench-{concurrency}-{i}") for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out = judge.judge_all(items, Store(tmp))
        wall = time.perf_counter() - t0
    if failed := sum(j.scores is None for j in out):
        raise RuntimeError(f"{failed} judgments failed without faults: {out[0].error}")
    return wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--latency-s", type=float, default=0.25)
    p.add_argument("--concurrency", default="1,4,8,16,32")
    a = p.parse_args()
    print(f"N={a.n} judgments, latency L={a.latency_s} s, no faults")
    print(f"{'C':>4} {'ideal s':>8} {'wall s':>8} {'efficiency':>10}")
    with FaultServerProcess(fault_rate=0.0, latency_s=a.latency_s) as server:
        for c in map(int, a.concurrency.split(",")):
            ideal = a.n * a.latency_s / c
            wall = run(server.base_url, a.n, c, a.latency_s)
            flag = "" if ideal / wall >= 0.8 else "  < 0.8"
            print(f"{c:>4} {ideal:>8.2f} {wall:>8.2f} {ideal / wall:>10.2f}{flag}")


if __name__ == "__main__":
    main()
