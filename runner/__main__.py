"""python -m runner [-m] [group=option ...]: run one cell per Hydra job."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from runner import callbacks
from runner.cell import Cell
from runner.pipeline import run_cell
from runner.progress import quiet_console_logs
from runner.stages.judge import judge_where
from runner.sweep import first_swept_value


def launcher_parallelism(launcher: DictConfig | None) -> int:
    """How many cells the launcher runs at once: joblib's n_jobs, submitit's array_parallelism, else 1."""
    for key in ("n_jobs", "array_parallelism"):
        value = (launcher or {}).get(key)
        if value:
            return (os.cpu_count() or 1) if int(value) < 0 else int(value)
    return 1


def repeated_by_artifact_sweep(cfg: DictConfig, sweep_dir: Path) -> str | None:
    """A sweep over artifact.path repeats every other precision once per path: all but the first are skipped."""
    mine = (cfg.get("artifact") or {}).get("path")
    first = first_swept_value(sweep_dir, "artifact.path")
    return first if mine is not None and first is not None and str(mine) != first else None


def repeated_by_calibration_sweep(cfg: DictConfig, sweep_dir: Path) -> str | None:
    """A sweep over calibration repeats every uncalibrated cell once per value: all but the first are skipped."""
    first = first_swept_value(sweep_dir, "calibration")
    mine = str((cfg.get("calibration") or {}).get("name"))
    return first if first is not None and mine != first else None


def run_job(cfg: DictConfig) -> str:
    """One Hydra job: one cell (also the task function `replay resume` hands the launcher)."""
    hc = HydraConfig.get()
    multirun = hc.mode.name == "MULTIRUN"
    quiet_console_logs()  # Hydra set up this job's logging just now; the progress display says the rest
    job_dir = Path(hc.runtime.output_dir)
    # `replay resume` puts a resubmitted job back in its own dir (hydra.sweep.subdir=N) under a new job.num
    num = int(job_dir.name) if multirun and job_dir.name.isdigit() else hc.job.num if multirun else None
    cell = Cell.from_config(cfg, list(hc.overrides.task), num)
    if multirun and not cell.precision.get("prebuilt"):
        cell.duplicate_of = repeated_by_artifact_sweep(cfg, Path(hc.sweep.dir))
    if multirun and not cell.method.get("calibrated"):
        cell.duplicate_calibration = repeated_by_calibration_sweep(cfg, Path(hc.sweep.dir))
    launcher = str(hc.launcher.get("_target_", ""))
    record = run_cell(cell, job_dir, parallel_jobs=launcher_parallelism(hc.launcher) if multirun else 1,
                      judge_at_end=multirun and judge_where(cfg.judge, launcher) == "end")
    return record.status


main = hydra.main(version_base="1.3", config_path="../conf", config_name="config")(run_job)


if __name__ == "__main__":
    main()
    sys.exit(1 if callbacks.FAILED_CELLS or callbacks.END_ERRORS else 0)
