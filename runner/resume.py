"""Finish a sweep: resubmit only its jobs that are missing or failed (preempted, timed out, cancelled), with
the sweep's own launcher and settings, into their own job dirs: `python -m runner.replay resume SWEEP`.

The store makes the finished work of those jobs free (artifacts, answers, judgments). Like `python -m
runner -m`, it ends with the end-of-sweep judging (judge.where=end), the matrix, the report and the answer.
"""

from __future__ import annotations

from pathlib import Path

from runner import slurm
from runner.sweep import Sweep, SweepError, job_overrides, saved_hydra

DONE = ("ok", "skipped")


def jobs_to_resume(sweep: Sweep) -> list[tuple[int, list[str]]]:
    """(job number, task overrides) of every job without an ok or skipped record."""
    jobs = job_overrides(saved_hydra(sweep.dir))
    if jobs is None:
        raise SweepError(f"{sweep.dir}: resume needs the basic sweeper's job list (multirun.yaml names another)")
    done = {j.num for j in sweep.jobs if j.record is not None and j.record.status in DONE}
    return [(n, overrides) for n, overrides in enumerate(jobs) if n not in done]


def queued_jobs(sweep: Sweep) -> list[str]:
    """Scheduler jobs of this sweep still queued or running (submitit keeps one folder per Slurm job)."""
    folder = sweep.dir / ".submitit"
    ids = [d.name for d in folder.iterdir() if d.name.split("_")[0].isdigit()] if folder.is_dir() else []
    return sorted(slurm.squeue(ids) or {})


def launch_overrides(sweep: Sweep) -> list[str]:
    """The sweep's own Hydra overrides (launcher and its settings), with its dir."""
    saved = [str(o) for o in (saved_hydra(sweep.dir).get("overrides") or {}).get("hydra") or []]
    return [o for o in saved if not o.startswith(("hydra.sweep.dir=", "hydra.mode="))] + [
        f"hydra.sweep.dir={sweep.dir.resolve()}", "hydra.mode=MULTIRUN"]


def resume(sweep: Sweep) -> int:
    """Resubmit the unfinished jobs and wait for them; how many were resubmitted."""
    # Hydra's own multirun (hydra._internal.hydra.Hydra.multirun), with our job list instead of a sweeper's.
    from hydra._internal.callbacks import Callbacks
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.plugins import Plugins
    from hydra.core.utils import JobReturn
    from hydra.types import HydraContext, RunMode

    from runner import callbacks as runner_callbacks
    from runner.__main__ import run_job
    from runner.cell import CONF_DIR

    sweep.require_multirun()
    if queued := queued_jobs(sweep):
        raise SweepError(f"{sweep.dir}: jobs of this sweep are still queued or running ({', '.join(queued)}); "
                         "wait for them (squeue) or scancel them, then resume")
    todo = jobs_to_resume(sweep)
    if not todo:
        return 0
    for n, _ in todo:  # kept beside the new record, for the audit
        if (old := sweep.dir / str(n) / "result.json").exists():
            old.replace(old.with_name("result.previous.json"))
    GlobalHydra.instance().clear()
    hydra = Hydra.create_main_hydra2("runner", create_config_search_path(str(Path(CONF_DIR))))
    cfg = hydra.compose_config("config", overrides=launch_overrides(sweep), run_mode=RunMode.MULTIRUN)
    hooks = Callbacks(cfg)
    runner_callbacks.EXPECTED_JOBS[:] = [len(todo)]
    hooks.on_multirun_start(config=cfg, config_name="config")
    launcher = Plugins.instance().instantiate_launcher(
        config=cfg, hydra_context=HydraContext(config_loader=hydra.config_loader, callbacks=hooks), task_function=run_job)
    # Each job goes back into its own dir: its new job number is only its place in this batch.
    returns: list[JobReturn] = list(launcher.launch([[*overrides, f"hydra.sweep.subdir={n}"] for n, overrides in todo],
                                                    initial_job_idx=0))
    hooks.on_multirun_end(config=cfg, config_name="config")
    for ret in returns:
        _ = ret.return_value  # re-raises a job's exception, as Hydra does
    return len(todo)
