"""python -m runner [-m] [group=option ...]: run one cell per Hydra job."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from runner import callbacks
from runner.cell import Cell
from runner.pipeline import run_cell
from runner.progress import Progress


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> str:
    hc = HydraConfig.get()
    cell = Cell.from_config(cfg, list(hc.overrides.task), hc.job.num if hc.mode.name == "MULTIRUN" else None)
    label = f"{cell.identity.model} × {cell.identity.format} × {cell.identity.precision}"
    progress = Progress(label, quiet=bool(cfg.get("quiet")))
    try:
        record = run_cell(cell, Path(hc.runtime.output_dir), progress)
    finally:
        progress.close()
    return record.status


if __name__ == "__main__":
    main()
    sys.exit(1 if callbacks.FAILED_CELLS else 0)
