"""Sweeps on a real Slurm cluster (scripts/slurm-local.sh starts a one-node one): cells as Slurm jobs, one
shared store, a killed job resumed, judging at the end in the submitting process.

Skipped where no cluster answers, unless REQUIRE_SLURM=1 (set by .ci/run), where that is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from conftest import FAST, REPO, run_runner, sweep_dirs
from runner.records import read_cell_record
from runner.testing.fault_server import FaultServerProcess

SLURM = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2",
         "hydra.launcher.timeout_min=10"]
CELLS = ["format=gguf,mlx", "precision=fp16,q4_0", *[a for a in FAST if a != "quiet=true"]]


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster():
    why = None
    if shutil.which("sinfo") is None:
        why = "sinfo not found"
    else:
        proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
        if proc.returncode != 0 or not re.search(r"idle|mix|alloc", proc.stdout):
            why = f"no idle Slurm node (sinfo: {(proc.stdout + proc.stderr).strip()[:200]})"
    if why:
        message = f"no Slurm cluster here ({why}); start one with scripts/slurm-local.sh start"
        if os.environ.get("REQUIRE_SLURM") == "1":
            pytest.fail(message)
        pytest.skip(message)


def builds(store: Path) -> list[dict]:
    return [json.loads(line) for line in (store / "builds.jsonl").read_text().splitlines()]


def test_a_sweep_runs_every_cell_as_a_slurm_job(tmp_path):
    t0 = time.time()
    proc = run_runner(["-m", *SLURM, *CELLS], tmp_path)
    slurm_s = time.time() - t0
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    sweep = sweep_dirs(tmp_path)[0]
    df = pd.read_csv(sweep / "matrix.csv")
    assert len(df) == 4 and sorted(df.status) == ["ok", "ok", "ok", "skipped"]  # mlx × q4_0 does not exist
    records = [read_cell_record(p) for p in sweep.glob("*/result.json")]
    jobs = {r.host.scheduler_job for r in records}
    assert None not in jobs and len(jobs) == 4  # every cell ran as its own Slurm job
    assert {r.host.array_index for r in records} == {0, 1, 2, 3} and all(r.host.node for r in records)
    assert df.slurm_job.notna().all() and df.node.notna().all()
    assert len([b for b in builds(tmp_path / "store") if b["kind"] == "gguf-base"]) == 1  # the F16 GGUF once
    assert all(b["slurm_job"] for b in builds(tmp_path / "store"))  # every build was made inside a job
    lines = proc.stdout.splitlines()
    assert "jobs: 4 queued · 0 running · 0 ok · 0 skipped · 0 failed" in lines[0]
    assert any(line.startswith("jobs: 0 queued · 0 running · 3 ok · 1 skipped · 0 failed") for line in lines)
    progress = lines[:next(i for i, line in enumerate(lines) if line.startswith("Matrix ("))]
    assert not any("━" in line or "[generate]" in line for line in progress)  # no bars: a line per state change

    t0 = time.time()  # the same sweep with the basic launcher, for the wall-time comparison
    basic = run_runner(["-m", *CELLS, "store_dir=" + str(tmp_path / "basic-store")], tmp_path / "basic")
    assert basic.returncode == 0, basic.stderr[-2000:]
    print(f"4-cell sweep wall time: slurm {slurm_s:.1f} s, basic launcher {time.time() - t0:.1f} s")


def _submit(args: list[str], root: Path, **env: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "runner", "-m", *args, f"outputs_root={root}"]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **env}, start_new_session=True)


def test_two_sweeps_at_once_build_every_artifact_once(tmp_path):
    store = tmp_path / "shared-store"
    first = _submit([*SLURM, *CELLS, f"store_dir={store}"], tmp_path / "a")
    second = _submit([*SLURM, "format=gguf", "precision=fp16,q4_0,q8_0", *FAST, f"store_dir={store}"], tmp_path / "b")
    for proc in (first, second):
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
    per_artifact = Counter((b["kind"], b["key"]) for b in builds(store))
    print("builds per artifact:", dict(Counter(kind for kind, _ in per_artifact.elements())),
          "max builds of one key:", max(per_artifact.values()))
    assert set(per_artifact.values()) == {1}
    kinds = Counter(kind for kind, _ in per_artifact)
    assert kinds["gguf-base"] == 1 and kinds["gguf"] == 2 and kinds["mlx"] == 1  # q4_0, q8_0; mlx fp16


def _wait_for_the_queue(sweep: Path, timeout: float = 180) -> None:
    from runner.resume import queued_jobs
    from runner.sweep import load_sweep

    deadline = time.time() + timeout
    while (queued := queued_jobs(load_sweep(sweep))) and time.time() < deadline:
        time.sleep(0.5)
    assert not queued, f"jobs still queued: {queued}"


def test_a_job_killed_mid_build_is_resumed(tmp_path):
    """The job converting the model is killed outright (as by the OOM killer or a lost node): its soft lock is
    left behind, the job waiting on it takes it over, and `replay resume` runs the killed cell again."""
    proc = _submit([*SLURM, *CELLS, "store_lock=soft"], tmp_path)
    building = tmp_path / "store" / "gguf-base"
    deadline = time.time() + 120
    while time.time() < deadline and not (list(building.glob(".tmp-*")) and list(building.glob("*.lock"))):
        time.sleep(0.05)
    (lock,) = building.glob("*.lock")
    holder = int(re.search(r"pid=(\d+)", lock.read_text()).group(1))
    os.kill(holder, signal.SIGKILL)  # no time to clean up: the lock file stays
    sweep = sweep_dirs(tmp_path)[0]
    _wait_for_the_queue(sweep)
    # The user leaves (submitit, without Slurm accounting on this test cluster, would wait for the dead job).
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert not (sweep / "matrix.csv").exists() and len(list(sweep.glob("*/result.json"))) == 3
    logs = "".join(p.read_text() for p in sweep.glob("*/runner.log"))
    assert re.search(rf"took over the store lock .*gguf-base.* left by pid {holder} on .*no longer running", logs)

    resumed = run_runner(["resume", str(sweep)], tmp_path, module="runner.replay")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-2000:]
    df = pd.read_csv(sweep / "matrix.csv")
    assert sorted(df.status) == ["ok", "ok", "ok", "skipped"]
    assert len([b for b in builds(tmp_path / "store") if b["kind"] == "gguf-base"]) == 1
    again = run_runner(["resume", str(sweep)], tmp_path, module="runner.replay")
    assert again.returncode == 0 and "nothing to resume" in again.stdout


def test_judging_at_the_end_happens_in_the_submitting_process(tmp_path):
    judge = ["judge=openai", "judge.concurrency=2", "judge.reference=baseline", "judge.max_retries=0"]
    with FaultServerProcess(fault_rate=0.0, latency_s=0.05) as server:
        judge.append(f"judge.base_url={server.base_url}")
        key = {"OPENAI_API_KEY": "sk-test-end"}
        slurm = run_runner(["-m", *SLURM, *CELLS, *judge], tmp_path / "slurm", env=key)  # judge.where: auto → end
        assert slurm.returncode == 0, slurm.stdout[-2000:] + slurm.stderr[-2000:]
        stats = server.stats()
        server.reset()
        local = run_runner(["-m", *CELLS, *judge, "judge.where=cell"], tmp_path / "local", env=key)
        assert local.returncode == 0, local.stderr[-2000:]
    sweep = sweep_dirs(tmp_path / "slurm")[0]
    records = [read_cell_record(p) for p in sweep.glob("*/result.json")]
    last_cell_end = max(r.windows["cell"][1] for r in records)
    assert stats["requests"] == 14 and stats["first_at"] >= last_cell_end  # no judge call from a compute job
    assert stats["max_in_flight"] <= 2  # one global limit, not one per job
    assert not any(r.judge_pending for r in records)
    cols = ["format", "precision", "overall", "accuracy", "coherence", "relevance", "judged"]
    end = pd.read_csv(sweep / "matrix.csv")[cols].sort_values(cols[:2]).reset_index(drop=True)
    cell = pd.read_csv(sweep_dirs(tmp_path / "local")[0] / "matrix.csv")[cols].sort_values(cols[:2])
    pd.testing.assert_frame_equal(end, cell.reset_index(drop=True))


SACCT_COMPLAINT = "accounting storage is disabled"  # sacct's stderr where accounting is off (this test cluster)


def largest_node() -> tuple[int, int]:
    """(CPUs, memory MB) of the largest node of the default partition, as sinfo lists it."""
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%c %m"], capture_output=True, text=True, check=True).stdout
    return max(tuple(map(int, line.split())) for line in out.splitlines())


def _sweep(args: list[str], root: Path) -> subprocess.Popen:
    """`python -m runner -m ARGS`, stdout and stderr kept apart, in its own session (killed at the end if need be)."""
    return subprocess.Popen([sys.executable, "-m", "runner", "-m", *args, f"outputs_root={root}"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float, root: Path) -> tuple[str, str]:
    """The sweep's output; one still waiting after `timeout` is killed, its Slurm jobs cancelled, and the test fails."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        jobs = {d.name.split("_")[0] for d in root.glob("multirun/*/.submitit/*") if d.name[0].isdigit()}
        subprocess.run(["scancel", *jobs], capture_output=True)
        pytest.fail(f"the sweep was still waiting after {timeout} s:\n{out[-2000:]}\n{err[-2000:]}")


def test_a_request_larger_than_any_node_stops_before_anything_is_submitted(tmp_path):
    """The launcher's defaults (4 CPUs, 32 GB) on a smaller node pended forever (PartitionConfig) or were refused
    by sbatch with a traceback; now one line names the request, the node and the overrides, and nothing is queued."""
    cpus, mem_mb = largest_node()
    ask_cpus, ask_gb = max(4, cpus + 1), max(32, mem_mb // 1024 + 1)  # slurm.yaml's defaults, unless a node fits them
    size = [] if (ask_cpus, ask_gb) == (4, 32) else [f"hydra.launcher.cpus_per_task={ask_cpus}",
                                                      f"hydra.launcher.mem_gb={ask_gb}"]
    t0 = time.time()
    proc = _sweep(["hydra/launcher=slurm", *size, "format=gguf", "precision=fp16,q4_0", *FAST], tmp_path)
    out, err = _finish(proc, timeout=30, root=tmp_path)
    assert proc.returncode == 2, out[-2000:] + err[-2000:]
    print(f"stopped after {time.time() - t0:.1f} s")
    node_gb = f"{mem_mb / 1024:.1f}".rstrip("0").rstrip(".")
    assert [line for line in err.splitlines() if line.strip()] == [
        f"error: Slurm jobs on partition {_default_partition()} could never start: each asks for {ask_cpus} CPUs and "
        f"{ask_gb} GB per node, the largest node has {cpus} CPU{'s' * (cpus > 1)} and {node_gb} GB; "
        f"set hydra.launcher.cpus_per_task={cpus} hydra.launcher.mem_gb={mem_mb // 1024}"], err
    assert SACCT_COMPLAINT not in out + err
    assert not list(tmp_path.rglob(".submitit"))  # nothing was submitted, so nothing waits in the queue


def _default_partition() -> str:
    out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, check=True).stdout
    return next(p.rstrip("*") for p in out.split() if p.endswith("*"))


@pytest.fixture
def down_partition():
    """A partition of this cluster's nodes that is DOWN: jobs sent there pend (PartitionDown) until it is UP."""
    name = f"runnertest{os.getpid()}"
    subprocess.run(["scontrol", "create", f"PartitionName={name}", "Nodes=ALL", "State=DOWN"], check=True)
    yield name
    subprocess.run(["scancel", "-p", name], capture_output=True)
    subprocess.run(["scontrol", "delete", f"PartitionName={name}"], capture_output=True)


def _pending(partition: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-r", "-p", partition, "-o", "%r"], capture_output=True, text=True).stdout
    return out.split()


def _slurm_log(root: Path) -> str:
    return "".join(p.read_text() for p in root.glob("multirun/*/slurm.log"))


def test_a_job_that_can_never_start_is_cancelled_with_one_line_saying_why(tmp_path, down_partition):
    """While the jobs wait (PartitionDown: shown, not fatal), an admin caps the partition below their request:
    Slurm says PartitionConfig, the sweep cancels its jobs, records why on every cell and exits 1 at once."""
    assert largest_node()[0] >= 2, "this test asks for 2 CPUs"
    args = ["hydra/launcher=slurm", f"hydra.launcher.partition={down_partition}", "hydra.launcher.cpus_per_task=2",
            "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=10", "format=gguf", "precision=fp16,q4_0",
            *[a for a in FAST if a != "quiet=true"]]
    proc = _sweep(args, tmp_path)
    deadline = time.time() + 20
    while time.time() < deadline and _pending(down_partition) != ["PartitionDown"] * 2:
        time.sleep(0.2)
    assert _pending(down_partition) == ["PartitionDown"] * 2
    while time.time() < deadline and "pending (PartitionDown)" not in _slurm_log(tmp_path):
        time.sleep(0.2)  # the sweep's poller has heard it too, and so the display
    subprocess.run(["scontrol", "update", f"PartitionName={down_partition}", "MaxCPUsPerNode=1", "State=UP"],
                   check=True)
    t0 = time.time()
    out, err = _finish(proc, timeout=30, root=tmp_path)
    print(f"stopped {time.time() - t0:.1f} s after the partition changed")
    assert proc.returncode == 1, out[-2000:] + err[-2000:]
    (line,) = [line for line in err.splitlines() if line.strip()]
    assert re.fullmatch(rf"error: Slurm job \d+ can never start on partition {down_partition} \(pending: \w+\): "
                        r"it asks for 2 CPUs and 2 GB per node, the largest node has 1 CPU and [\d.]+ GB; "
                        r"set hydra.launcher.cpus_per_task=1", line), line
    assert any(re.match(r"jobs: 2 queued \(PartitionDown\) · 0 running", s) for s in out.splitlines()), out
    assert SACCT_COMPLAINT not in out + err
    assert _pending(down_partition) == []  # cancelled
    sweep = sweep_dirs(tmp_path)[0]
    records = [read_cell_record(sweep / str(n) / "result.json") for n in (0, 1)]
    assert [(r.cell.precision, r.status, r.reason) for r in records] == [
        (p, "failed", f"not run: {line.removeprefix('error: ')}") for p in ("fp16", "q4_0")]
    assert (sweep / "slurm.log").read_text().count(SACCT_COMPLAINT) <= 1  # said once, in the sweep's Slurm log


def test_jobs_are_named_runner_and_sacct_stays_off_the_console(tmp_path):
    proc = _sweep([*SLURM, "format=gguf", "precision=fp16", *FAST], tmp_path)
    out, err = _finish(proc, timeout=60, root=tmp_path)
    assert proc.returncode == 0, out[-2000:] + err[-2000:]
    assert SACCT_COMPLAINT not in out + err, out + err
    sweep = sweep_dirs(tmp_path)[0]
    (script,) = sweep.glob(".submitit/*/*_submission.sh")
    assert "#SBATCH --job-name=runner\n" in script.read_text()
    job = script.name.split("_")[0]
    shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    assert re.search(r"JobName=runner\b", shown), shown  # what squeue and sacct list
    assert (sweep / "0" / "runner.log").is_file() and not list(sweep.glob("*/__main__.log"))
    assert (sweep / "slurm.log").read_text().count(SACCT_COMPLAINT) <= 1
