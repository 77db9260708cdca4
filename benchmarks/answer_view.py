"""The answer view at scale: 14 builds × 60 prompts (the tiny model, prompts=standard, judged by the fault
server so every answer carries reasoning; 128-token answers with the tiny model's thinking kept, so every
answer has its full length). Measures report.html / samples.csv sizes, the page's load
time in headless chromium, and how long a filter and a sort take in the page.

python benchmarks/answer_view.py [--sweep DIR] [--screenshot PNG]    needs playwright + chromium (tests do too)

--sweep measures an existing sweep instead of running one; --screenshot saves the answers section (the
README's picture: `--sweep` of a real-model sweep with `--screenshot docs/answer-view.png`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from runner.testing.fault_server import FaultServerProcess

REPO = Path(__file__).resolve().parents[1]
PRECISIONS = "fp16,bf16,q8_0,q6_k,q5_k_m,q4_k_m,q4_0,8bit,6bit,5bit,4bit,3bit"  # 7 gguf + 7 mlx builds


def run_sweep(root: Path) -> Path:
    with FaultServerProcess(fault_rate=0.0) as server:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "runner", "-m", "format=gguf,mlx", f"precision={PRECISIONS}", "prompts=standard",
             "generation.max_tokens=128", "generation.strip_thinking=false", "fidelity.enabled=false", "quiet=true", "judge=openai",
             f"judge.base_url={server.base_url}", "judge.concurrency=16", f"outputs_root={root}"],
            cwd=REPO, capture_output=True, text=True, env={**os.environ, "OPENAI_API_KEY": "sk-bench"})
    print(f"sweep: {time.perf_counter() - t0:.0f} s, exit {proc.returncode}")
    if proc.returncode != 0:
        sys.exit(proc.stdout[-3000:] + proc.stderr[-3000:])
    (sweep,) = (root / "multirun").iterdir()
    return sweep


def measure(sweep: Path, screenshot: Path | None) -> None:
    html, csv = sweep / "report.html", sweep / "samples.csv"
    print(f"report.html {html.stat().st_size / 1e6:.2f} MB, samples.csv {csv.stat().st_size / 1e6:.2f} MB")
    exe = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        t0 = time.perf_counter()
        page.goto(html.as_uri(), wait_until="load")
        load = time.perf_counter() - t0
        rows = page.locator("tr.av-row").count()
        timings = page.evaluate("""() => {
            const t = performance.now();
            const box = document.getElementById('av-differs');
            box.checked = true; box.dispatchEvent(new Event('change'));
            document.body.offsetHeight;  // force the layout the filter caused
            const filter = performance.now() - t;
            box.checked = false; box.dispatchEvent(new Event('change'));
            const th = document.querySelector('table.av-table th:nth-child(4)');
            const s = performance.now(); th.click(); document.body.offsetHeight;
            return {filter, sort: performance.now() - s,
                    nav: performance.getEntriesByType('navigation')[0].loadEventEnd};
        }""")
        print(f"{rows} answer rows; load {load:.2f} s (navigation loadEventEnd {timings['nav'] / 1000:.2f} s), "
              f"filter {timings['filter']:.0f} ms, sort one table {timings['sort']:.1f} ms")
        if screenshot:
            page.check("#av-differs")
            page.evaluate("document.getElementById('answers').scrollIntoView()")
            page.screenshot(path=str(screenshot))
            print(f"screenshot: {screenshot}")
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=Path)
    parser.add_argument("--screenshot", type=Path)
    args = parser.parse_args()
    sweep = args.sweep or run_sweep(Path(tempfile.mkdtemp(prefix="answer-view-")))
    measure(sweep, args.screenshot)


if __name__ == "__main__":
    main()
