"""The submitting process's poller of its Slurm jobs, and the stop of a sweep whose jobs can never start.

submitit polls its jobs through one watcher shared by all its Slurm jobs (`SlurmJob.watcher`). Its own runs
`sacct` with stderr going to the terminal, so on a cluster without accounting every poll printed "Slurm
accounting storage is disabled"; and it knows no pending reasons, so a job that can never start was waited
for forever. `watch` puts a `QueueWatcher` there instead, which

* captures sacct's stderr: the complaint goes once into the sweep's `slurm.log`, and from then on the job
  states come from squeue;
* asks squeue why jobs pend (`slurm.remember`: the progress display shows it; `slurm.log` keeps each change);
* stops the sweep when a job can never start (`slurm.never_starts`): it cancels the sweep's jobs, gives each
  cell without a record a failed one saying why, prints one line naming the settings to change, and exits 1.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from omegaconf import DictConfig, open_dict
from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

from runner import slurm

LOG_FILE = "slurm.log"  # in the sweep dir: what the submitting process heard from Slurm
log = logging.getLogger(__name__)


class QueueWatcher(SlurmInfoWatcher):
    """submitit's poller of this process's Slurm jobs, quiet (sacct's stderr captured) and reading squeue too;
    `on_never(message, array ids)` is called when a job can never start."""

    def __init__(self, on_never: Callable[[str, list[str]], None], tasks_per_node: int = 1, delay_s: int = 30):
        super().__init__(delay_s=delay_s)  # polls 0, 2, 4, 8 ... s after a submission, then every delay_s
        self.on_never, self.tasks_per_node = on_never, tasks_per_node
        self.accounting = True  # until sacct says it is disabled
        self._sacct_error = ""
        self._reasons: dict[str, str] = {}
        # a partition's sizes and limits per (partition, pending reason): asked again when the reason changes
        self._partitions: dict[tuple[str, str], slurm.Partition | None] = {}

    def update(self) -> None:
        todo = self._registered - self._finished
        if not todo or (command := self._make_command()) is None:
            return
        self._num_calls += 1
        heard = self.accounting and self._sacct(command)
        queue = slurm.squeue(todo)
        if queue is not None:
            slurm.remember(queue)
            if not heard:  # a job gone from squeue keeps its last state; its result file ends the wait
                self._info_dict.update({i: {"JobID": i, "State": j.state} for i, j in queue.items()})
        self._last_status_check = time.time()
        for job_id in todo:
            if self.is_done(job_id, mode="cache"):
                self._finished.add(job_id)
        if queue:
            self._check(queue)

    def _sacct(self, command: list[str]) -> bool:
        """The job states from sacct, its stderr captured; False when it did not answer."""
        try:
            proc = subprocess.run(command, capture_output=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:  # OSError: no sacct here
            error, never = str(e), isinstance(e, OSError)
        else:
            if proc.returncode == 0:
                self._info_dict.update(self.read_info(proc.stdout))
                return True
            error = proc.stderr.decode(errors="replace").strip() or f"exit status {proc.returncode}"
            never = "accounting storage is disabled" in error
        if never:
            self.accounting = False
        if error != self._sacct_error:
            log.info("sacct: %s%s", error, "; job states come from squeue from now on" if never else "")
            self._sacct_error = error
        return False

    def _check(self, queue: dict[str, slurm.QueuedJob]) -> None:
        """Log each change of a pending reason; call `on_never` for a job that can never start."""
        changed: dict[str, list[str]] = {}
        for job in queue.values():
            if job.state == "PENDING" and job.reason != "None" and self._reasons.get(job.id) != job.reason:
                changed.setdefault(job.reason, []).append(job.id)
            self._reasons[job.id] = job.reason
        for reason, ids in changed.items():
            log.info("pending (%s): %s", reason, ", ".join(sorted(ids)))
        for job in queue.values():
            if job.state != "PENDING":
                continue
            key = (job.partition, job.reason)
            if key not in self._partitions:
                self._partitions[key] = slurm.partition(job.partition)
            if message := slurm.never_starts(job, self._partitions[key], self.tasks_per_node):
                self.on_never(message, sorted({j.array_id for j in queue.values()}))


def watch(sweep_dir: Path, config: DictConfig, before_stop: Callable[[], None]) -> QueueWatcher:
    """Poll this process's Slurm jobs with a `QueueWatcher`; a sweep that can never start is stopped (`stop`)."""
    _log_into(sweep_dir)

    def on_never(message: str, arrays: list[str]) -> None:
        stop(message, arrays, sweep_dir, config, before_stop)

    watcher = QueueWatcher(on_never, int(config.hydra.launcher.get("tasks_per_node") or 1))
    SlurmJob.watcher = watcher  # the one watcher of every SlurmJob of this process
    return watcher


def stop(message: str, arrays: list[str], sweep_dir: Path, config: DictConfig,
         before_stop: Callable[[], None]) -> NoReturn:
    """Cancel the sweep's jobs, record why on each cell without a record, say it in one line, exit 1."""
    subprocess.run(["scancel", *arrays], capture_output=True)
    log.info("%s; cancelled Slurm job %s", message, ", ".join(arrays))
    before_stop()
    record_not_run(sweep_dir, config, f"not run: {message}")
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1)  # out of submitit's wait; Hydra lets SystemExit through


def record_not_run(sweep_dir: Path, config: DictConfig, reason: str) -> None:
    """A failed record with `reason` in the dir of each job of the sweep that has none (collect and
    `replay resume` read them), composed as the launcher composes the job."""
    from hydra.core.global_hydra import GlobalHydra

    from runner.cell import Cell
    from runner.records import CellRecord, write_record
    from runner.sweep import job_overrides, saved_hydra

    jobs = job_overrides(saved_hydra(sweep_dir)) if (sweep_dir / "multirun.yaml").is_file() else None
    loader = GlobalHydra.instance().config_loader()
    for num, overrides in enumerate(jobs or []):
        job_dir = sweep_dir / str(num)
        if (job_dir / "result.json").exists():
            continue
        try:
            cfg = loader.load_sweep_config(config, overrides)
            with open_dict(cfg):
                del cfg["hydra"]  # its run-time fields are unset here; a cell does not read them
            cell = Cell.from_config(cfg, overrides, num)
        except Exception as e:  # noqa: BLE001 - a cell that cannot even be named gets no record
            log.info("no record for job %d: %s: %s", num, type(e).__name__, e)
            continue
        write_record(CellRecord(cell=cell.identity, status="failed", reason=reason), job_dir)


def _log_into(sweep_dir: Path) -> None:
    """This module's lines go to `SWEEP/slurm.log` only (created at the first line), never to the console."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    handler = logging.FileHandler(sweep_dir / LOG_FILE, delay=True)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%Y-%m-%d %H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
