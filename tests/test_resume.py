"""Parallel cells (joblib launcher) build each artifact once; a killed sweep re-runs to completion."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from conftest import FAST, REPO, run_runner, sweep_dirs
from runner.store import Store


def _build_once(root: str, marker: str) -> str:
    def build(tmp: Path) -> dict:
        with open(marker, "a") as f:
            f.write("built\n")
        time.sleep(0.3)
        (tmp / "data").write_text("x")
        return {}

    return Store(root).get_or_build("thing", {"k": 1}, build).key


def test_store_builds_a_key_once_across_processes(tmp_path):
    marker = tmp_path / "marker"
    with mp.get_context("spawn").Pool(3) as pool:
        keys = pool.starmap(_build_once, [(str(tmp_path / "store"), str(marker))] * 3)
    assert len(set(keys)) == 1
    assert marker.read_text() == "built\n"
    assert not list((tmp_path / "store" / "thing").glob(".tmp-*"))


def test_joblib_launcher_runs_cells_in_parallel_and_converts_once(tmp_path):
    proc = run_runner(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "format=gguf",
                       "precision=fp16,q8_0,q4_0", *FAST], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_csv(sweep_dirs(tmp_path)[0] / "matrix.csv")
    assert list(df.status) == ["ok"] * 3
    assert len(Store(tmp_path / "store").builds("gguf-base")) == 1
    assert (df.parallel_jobs == 2).all() and (df.speed_parallel_jobs == 2).all()  # speed measured two at a time
    assert "⚠️ **SPEED NOT COMPARABLE**" in (sweep_dirs(tmp_path)[0] / "report.md").read_text()


def test_killed_sweep_reruns_to_completion(tmp_path):
    args = ["-m", "format=gguf,mlx", "precision=fp16,q4_0,4bit", "generation.max_tokens=256", "quiet=true",
            "fidelity.chunk_len=64", "fidelity.tokens=256", f"outputs_root={tmp_path}"]
    proc = subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    log = tmp_path / "store" / "builds.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and '"generations"' in log.read_text()):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-cell: generating the first cell's answers
    proc.wait()
    assert list((sweep_dirs(tmp_path)[0]).glob("*/result.json")) == []
    done = run_runner(args[:-1], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    df = pd.read_csv(sweep_dirs(tmp_path)[-1] / "matrix.csv")
    assert sorted(df.status) == ["ok"] * 4 + ["skipped"] * 2
    store = Store(tmp_path / "store")
    assert len(store.builds("gguf-base")) == 1  # the conversion done before the kill was reused
    assert not list(store.root.glob("*/.tmp-*"))


def test_file_digests_are_memoized_and_follow_content(tmp_path):
    from runner.model_source import content_hash

    store = Store(tmp_path / "store")
    model = tmp_path / "m"
    model.mkdir()
    (model / "a.bin").write_bytes(b"one")
    first = content_hash(model, store)
    assert first == content_hash(model) and "a.bin" in (tmp_path / "store" / "digests.json").read_text()
    (model / "a.bin").write_bytes(b"two!")  # new size and mtime: digested again
    assert content_hash(model, store) != first


def test_cached_speed_from_another_host_is_stale_not_reused(tmp_path):
    """Answers are reused from the store, but speed measured on other hardware is left out and flagged."""
    args = ["format=gguf", *FAST, "fidelity.enabled=false"]
    assert run_runner(args, tmp_path).returncode == 0
    for manifest in (tmp_path / "store" / "generations").glob("*/manifest.json"):
        data = json.loads(manifest.read_text())
        data["record"]["measured_on"] = "0123456789abcdef/metal"  # as if generated on a Mac
        manifest.write_text(json.dumps(data))
    proc = run_runner(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = sorted((tmp_path / "runs").iterdir())[-1]
    row = pd.read_csv(run / "matrix.csv").iloc[0]
    assert row.generations_cached == 7 and row.speed_stale_answers == 7
    assert pd.isna(row.gen_tps) and pd.isna(row.s_per_prompt) and row.mean_tokens > 0  # tokens still count
    assert "⚠️ **STALE SPEED**: gguf fp16" in (run / "report.md").read_text()


def _hold_build(root: str, lock: str, started: str, seconds: float = 600) -> None:
    def build(tmp: Path) -> dict:
        Path(started).write_text("building")
        time.sleep(seconds)
        return {}

    Store(root, lock=lock, lease_s=2.0).get_or_build("thing", {"k": 1}, build)


def _builder(tmp_path: Path, lock: str, seconds: float = 600):
    """A process building key k of the store under its lock (for `seconds`), once it has started building."""
    started = tmp_path / "started"
    proc = mp.get_context("spawn").Process(target=_hold_build,
                                           args=(str(tmp_path / "store"), lock, str(started), seconds))
    proc.start()
    deadline = time.time() + 60
    while not started.exists() and time.time() < deadline:
        time.sleep(0.05)
    return proc


@contextmanager
def _lock_log() -> Iterator[list[str]]:
    """The messages runner.locks logs inside the block."""
    import logging

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())  # type: ignore[method-assign]
    logging.getLogger("runner.locks").addHandler(handler)
    try:
        yield records
    finally:
        logging.getLogger("runner.locks").removeHandler(handler)


def _takeover(tmp_path: Path, lock: str, stop) -> tuple[float, str]:
    """A builder holds the store lock for key k and is killed (or stopped); another builder must get it."""
    proc = _builder(tmp_path, lock)
    stop(proc)
    try:
        with _lock_log() as records:
            t0 = time.time()
            entry = Store(tmp_path / "store", lock=lock, lease_s=2.0).get_or_build(
                "thing", {"k": 1}, lambda tmp: (tmp / "data").write_text("x") and {})
            took = time.time() - t0
    finally:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
        proc.join()
    assert (entry.path / "data").read_text() == "x" and not entry.cache_hit
    return took, "\n".join(records)


def _kill(proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()  # reaped, as a scheduler reaps a cancelled job (a zombie still counts as running)


def test_soft_lock_of_a_killed_builder_is_taken_over_at_once(tmp_path):
    took, logged = _takeover(tmp_path, "soft", _kill)
    assert took < 5 and "which is no longer running" in logged


def test_soft_lock_of_a_stalled_builder_is_taken_over_after_the_lease(tmp_path):
    took, logged = _takeover(tmp_path, "soft", lambda proc: os.kill(proc.pid, signal.SIGSTOP))  # alive, silent
    assert 2 <= took < 10 and "stopped refreshing it for 2 s" in logged


def test_file_lock_of_a_killed_builder_is_released_by_the_kernel(tmp_path):
    took, _ = _takeover(tmp_path, "file", _kill)
    assert took < 5


def test_a_live_builder_longer_than_the_lease_is_waited_for_not_taken_over(tmp_path):
    """It refreshes its soft lock while it builds (4 s against a 2 s lease) and releases it: the waiter gets the
    finished build and logs no takeover."""
    proc = _builder(tmp_path, "soft", seconds=4)
    try:
        with _lock_log() as records:
            entry = Store(tmp_path / "store", lock="soft", lease_s=2.0).get_or_build("thing", {"k": 1}, lambda tmp: {})
    finally:
        proc.join()
    assert entry.cache_hit and records == []
