"""The Hydra callback: pre-flight checks before a run or sweep, progress while it runs, the matrix, report
and summary after it."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from runner import progress
from runner.analysis.collect import collect
from runner.analysis.headline import print_summary
from runner.judges import make_judge
from runner.progress import SweepMonitor
from runner.rejudge import judge_deferred
from runner.secrets import SecretOverrideError, check_overrides
from runner.store import ensure_writable
from runner.stages.judge import judge_where
from runner.sweep import job_count, load_sweep

log = logging.getLogger(__name__)

FAILED_CELLS: list[str] = []  # filled at the end of a run; __main__ turns it into the exit status
END_ERRORS: list[str] = []  # the matrix or report could not be built (Hydra swallows callback exceptions)
# The display lives here, not on the callback: launchers (joblib) pickle the callbacks for their workers.
_MONITOR: list[SweepMonitor] = []
EXPECTED_JOBS: list[int] = []  # set by `replay resume`, which launches a job list of its own


def _stop(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)  # SystemExit passes through Hydra's callback guard (it swallows Exceptions)


def check_writable(out_dir: str) -> None:
    """Fail before any work with one clear message (Hydra would raise deep inside job setup)."""
    try:
        ensure_writable(Path(out_dir))
    except OSError as e:
        _stop(f"output dir {out_dir} is not writable ({e.strerror}); set outputs_root=...")


def check_no_secret_overrides(config: DictConfig) -> None:
    """Overrides are saved in overrides.yaml / hydra.yaml / multirun.yaml: refuse secrets there, hydra.* included."""
    try:
        check_overrides([*config.hydra.overrides.task, *config.hydra.overrides.hydra])
    except SecretOverrideError as e:
        _stop(str(e))


def check_judge(config: DictConfig) -> None:
    """`judge.where`: a valid value; at the end, the judge must be usable here (cells will not check it)."""
    try:
        where = judge_where(config.get("judge"), str(config.hydra.launcher.get("_target_", "")))
        if where == "end" and (judge := make_judge(config.judge)) is not None:
            judge.check_ready()
    except ValueError as e:
        _stop(str(e))


def check_configs(config: DictConfig, multirun: bool) -> None:
    """Settings invalid on their face stop the run before any cell builds or generates (runner/preflight.py)."""
    from runner.preflight import config_errors

    if errors := config_errors(config, multirun):
        print("\n".join(f"error: {e}" for e in errors) + "\nnothing was run", file=sys.stderr)
        raise SystemExit(2)


def check_slurm_request(config: DictConfig) -> None:
    """Jobs larger than any node of their partition would pend forever or be refused: stop before submitting."""
    from runner.slurm import request_problem

    if message := request_problem(config.hydra.launcher):
        _stop(message)


def stop_display() -> None:
    """End the progress display (its last poll prints what changed); `slurm_watch.stop` calls it to stop a sweep."""
    while _MONITOR:
        _MONITOR.pop().__exit__()


class RunnerCallback(Callback):
    """Pre-flight checks, the progress display while cells run, and the matrix, report and summary at the end."""

    def _start(self, config: DictConfig, out_dir_key: str, total: int | None, resumed: bool = False) -> None:
        HydraConfig.instance().set_config(config)  # `${hydra:...}` in the dirs needs it at this point
        check_no_secret_overrides(config)
        out_dir = config.hydra[out_dir_key].dir
        check_writable(out_dir)
        check_judge(config)
        slurm_sweep = out_dir_key == "sweep" and "SlurmLauncher" in str(config.hydra.launcher.get("_target_", ""))
        if slurm_sweep:
            check_slurm_request(config)
        if not resumed:
            check_configs(config, out_dir_key == "sweep")
        out = progress.console()
        scheduler = "submitit" in str(config.hydra.launcher.get("_target_", ""))
        mode = progress.display_mode(bool(config.get("quiet")), out, scheduler)
        _MONITOR.append(SweepMonitor(Path(out_dir), total, out, mode))
        _MONITOR[-1].__enter__()
        if slurm_sweep:  # pending reasons for the display, sacct kept quiet, a sweep that can never start stopped
            from runner.slurm_watch import watch

            watch(Path(out_dir), config, stop_display)

    def _finish(self, out_dir: Path) -> None:
        out = _MONITOR[-1].out if _MONITOR else progress.console()
        stop_display()
        try:
            if (out_dir / "multirun.yaml").is_file():
                judge_deferred(load_sweep(out_dir))  # judge.where=end: here, where the network is
            df = collect(out_dir)
            FAILED_CELLS.extend(f"{r.format} × {r.precision}: {r.reason}"
                                for r in df.itertuples() if r.status == "failed")
            print_summary(df, out_dir, out, baseline=load_sweep(out_dir).baseline())
        except Exception as e:  # noqa: BLE001 - Hydra would swallow it and exit 0 with no matrix
            END_ERRORS.append(f"building the matrix and report of {out_dir} failed: {type(e).__name__}: {e}")
            log.debug("matrix failure", exc_info=True)
            print(f"error: {END_ERRORS[-1]}", file=sys.stderr)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._start(config, "run", 1)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        resumed = bool(EXPECTED_JOBS)  # `replay resume`: the sweep's jobs were checked when it started
        total = EXPECTED_JOBS.pop() if resumed else job_count(OmegaConf.to_container(config.hydra, resolve=False))
        self._start(config, "sweep", total, resumed)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)
        self._finish(Path(config.hydra.runtime.output_dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)
        self._finish(Path(config.hydra.sweep.dir))
