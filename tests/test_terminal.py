"""What the terminal shows: per-cell lines (plain), the live sweep line (a forced terminal), clean skips,
and the answer at the end — the same from `python -m runner.collect`."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import REPO, run_runner, sweep_dirs

ARGS = ["-m", "format=mlx,gguf", "precision=fp16,q4_k_m", "generation.max_tokens=16", "fidelity.chunk_len=64",
        "fidelity.tokens=256"]
TERMINAL = {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "COLUMNS": "160"}  # rich's own switches
SKIP = "skipped mlx × q4_k_m: precision 'q4_k_m' does not apply to format 'mlx' (it applies to: gguf)"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\]8;[^\x1b]*\x1b\\")


def plain_text(out: str) -> list[str]:
    """Terminal output as the lines a reader ends up seeing (escape codes and carriage returns resolved)."""
    return [line.rstrip() for line in ANSI.sub("", out).replace("\r", "\n").splitlines() if line.strip()]


def summary_of(lines: list[str]) -> list[str]:
    start = next(i for i, line in enumerate(lines) if line.startswith("Matrix ("))
    return lines[start:]


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("plain")
    proc = run_runner(ARGS, root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root, proc.stdout.splitlines()


def test_plain_output_is_one_line_per_finished_cell(plain_run):
    _, lines = plain_run
    cells = [line for line in lines if re.match(r"\[\d/4\] ", line)]
    assert len(cells) == 4
    skips = [c for c in cells if " skipped " in c]
    assert len(skips) == 1 and re.fullmatch(rf"\[\d/4\] {re.escape(SKIP)}", skips[0])
    assert all(re.fullmatch(r"\[\d/4\] ok (mlx|gguf) × (fp16|q4_k_m) in \d+\.\d s", c) for c in cells if " ok " in c)
    assert not any("[HYDRA]" in line or "[INFO]" in line or "0/?" in line for line in lines)


def test_the_answer_at_the_end(plain_run):
    root, lines = plain_run
    summary = summary_of(lines)
    assert summary[0] == "Matrix (3 ok, 1 skipped)"
    header = next(line for line in summary if "Status" in line)
    for column in ("Status", "Size GB", "Bits/weight", "KLD", "Top-1 %", "Gen tok/s"):
        assert column in header
    rows = [line for line in summary if re.match(r"│ (gguf|mlx) ×", line)]
    assert [r.split("│")[1].strip() for r in rows] == ["gguf × q4_k_m", "gguf × fp16", "mlx × fp16"]  # by size
    assert "skipped (1): mlx × q4_k_m" in summary
    assert any(line.startswith("Recommendation: ") for line in summary)
    assert any(line.startswith("Thresholds: max_kld=0.05, min_top1=90.0") for line in summary)
    sweep = sweep_dirs(root)[0]
    assert f"Report: {(sweep / 'report.html').resolve().as_uri()}" in summary
    assert f"Matrix: {(sweep / 'matrix.csv').resolve()}" in summary


def test_collect_prints_the_same_answer(plain_run):
    root, lines = plain_run
    proc = run_runner([str(sweep_dirs(root)[0])], root, module="runner.collect")
    assert proc.returncode == 0, proc.stderr
    assert summary_of(proc.stdout.splitlines()) == summary_of(lines)


def test_a_terminal_shows_the_sweep_line_above_which_cells_finish(tmp_path):
    proc = run_runner([*ARGS, "generation.max_tokens=64"], tmp_path, env=TERMINAL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = plain_text(proc.stdout)
    sweep_lines = [line for line in lines if line.startswith("cell ")]
    assert sweep_lines and all(
        re.fullmatch(r"cell [1-4]/4 · \d ok · \d skipped · 0 failed · \d:\d\d:\d\d elapsed · ETA (–|\d:\d\d:\d\d)", s)
        for s in sweep_lines)
    assert any("2 ok · 1 skipped" in s for s in sweep_lines)  # counts move as cells finish
    assert any(re.search(r"× (fp16|q4_k_m) \[generate\] .* \d/7", line) for line in lines)  # a bar per running cell
    assert sum(bool(re.fullmatch(rf"\[\d/4\] {re.escape(SKIP)}", line)) for line in lines) == 1  # a line of its own
    assert summary_of(lines)[0] == "Matrix (3 ok, 1 skipped)"


def test_quiet_shows_only_the_answer_and_failures_are_listed(tmp_path):
    short = tmp_path / "short.txt"  # shorter than one chunk: known only once the cell has tokenized it
    short.write_text("just a few words")
    proc = run_runner(["format=gguf", "precision=q4_0", "quiet=true", f"fidelity.text={short}",
                       "generation.max_tokens=4"], tmp_path)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert not any(re.match(r"\[\d/\d\] |ok gguf", line) for line in lines)
    summary = summary_of(lines)
    assert summary[0] == "Matrix (1 failed)"
    assert any(line.startswith("failed gguf × q4_0: ValueError: fidelity.text") for line in summary)
    assert "shorter than one chunk" in " ".join(summary)  # the reason may wrap (a long temp path)


def test_lines_survive_an_engine_silencing_stdout_while_it_loads():
    """llama-cpp-python points fd 1 at /dev/null while it loads a model; the monitor thread of the same process
    (basic launcher) prints finished cells meanwhile, and those lines must still arrive."""
    script = "\n".join([
        "from llama_cpp._utils import suppress_stdout_stderr",
        "from runner import progress",
        "out = progress.console()",
        "with suppress_stdout_stderr(disable=False):",
        "    out.print('[2/4] skipped mlx × q4_k_m: [reason]', markup=False)",
        "print('after', flush=True)",
    ])
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["[2/4] skipped mlx × q4_k_m: [reason]", "after"]


def test_help_names_the_app():
    proc = subprocess.run([sys.executable, "-m", "runner", "--help"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("runner is powered by Hydra."), proc.stdout[:200]
    assert "__main__" not in proc.stdout
