"""What the config alone decides, checked for every job of a run or sweep before any cell runs.

A setting that is invalid on its face (`generation.max_tokens=0`, `fidelity.tokens` shorter than one chunk,
an unknown baseline build) would otherwise fail each cell only after it built and generated. Skipped
combinations (a format × precision pair that does not exist) are not errors. What needs the model, its
tokenizer or the engines (a text shorter than one chunk, a missing model folder) stays with the cell.
"""

from __future__ import annotations

from collections.abc import Iterator

from omegaconf import DictConfig, OmegaConf

from runner.cell import Cell
from runner.sweep import job_overrides

SHOWN = 3  # distinct problems printed; the rest are counted


def _job_configs(config: DictConfig, multirun: bool) -> Iterator[tuple[list[str], DictConfig]]:
    """(task overrides, composed config) of every job, composed as the launcher will compose them."""
    if not multirun:
        yield list(config.hydra.overrides.task), config
        return
    from hydra.core.global_hydra import GlobalHydra

    jobs = job_overrides(OmegaConf.to_container(config.hydra, resolve=False))
    if jobs is None:  # another sweeper: it composes the jobs itself
        return
    loader = GlobalHydra.instance().config_loader()
    for overrides in jobs:
        yield overrides, loader.load_sweep_config(config, overrides)


def problem(cell: Cell) -> str | None:
    """Why this cell's config cannot run, or None (also None for a combination that is skipped)."""
    if cell.invalid_reason():
        return None
    try:
        cell.validate(warn=False)
        if cell.fidelity.get("enabled"):
            baseline = str(cell.fidelity.get("baseline") or cell.baseline)
            if not cell.is_build(baseline):
                cell.build_configs(baseline)
    except (ValueError, FileNotFoundError) as e:
        return str(e)
    return None


def config_errors(config: DictConfig, multirun: bool) -> list[str]:
    """One line per distinct problem, naming the first job that has it; empty when every job can run."""
    found: dict[str, tuple[int, list[str], int]] = {}
    for num, (overrides, cfg) in enumerate(_job_configs(config, multirun)):
        task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])  # Hydra's own section is set per job
        try:
            message = problem(Cell.from_config(task, overrides, num))
        except Exception as e:  # noqa: BLE001 - a config that cannot even form a cell is the same kind of error
            message = f"{type(e).__name__}: {e}"
        if message:
            first_num, first_overrides, count = found.get(message, (num, overrides, 0))
            found[message] = (first_num, first_overrides, count + 1)
    lines = []
    for message, (num, overrides, count) in list(found.items())[:SHOWN]:
        where = (f" (job {num}: {' '.join(overrides)}" + (f", and {count - 1} more jobs" if count > 1 else "") + ")"
                 if multirun else "")
        lines.append(message + where)
    if len(found) > SHOWN:
        lines.append(f"... and {len(found) - SHOWN} more problems")
    return lines
