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


def launcher_parallelism(launcher: DictConfig | None) -> int:
    """How many cells the launcher runs at once: joblib's n_jobs, submitit's array_parallelism, else 1."""
    for key in ("n_jobs", "array_parallelism"):
        value = (launcher or {}).get(key)
        if value:
            return (os.cpu_count() or 1) if int(value) < 0 else int(value)
    return 1


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> str:
    hc = HydraConfig.get()
    multirun = hc.mode.name == "MULTIRUN"
    quiet_console_logs()  # Hydra set up this job's logging just now; the progress display says the rest
    cell = Cell.from_config(cfg, list(hc.overrides.task), hc.job.num if multirun else None)
    record = run_cell(cell, Path(hc.runtime.output_dir),
                      parallel_jobs=launcher_parallelism(hc.launcher) if multirun else 1)
    return record.status


if __name__ == "__main__":
    main()
    sys.exit(1 if callbacks.FAILED_CELLS or callbacks.END_ERRORS else 0)
