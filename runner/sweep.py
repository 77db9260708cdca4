"""A saved sweep (or single run) on disk: its jobs, their saved configs and records.

The matrix builder reads a sweep leniently (a job without a readable record is a failed row); replay
verbs call `Sweep.require_replayable()` first, which lists every missing or unreadable piece at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from runner.identity import parse_override
from runner.records import CellRecord, read_cell_record

NOT_FINISHED = "no result.json: the job did not finish"


class SweepError(ValueError):
    """A sweep dir that cannot be used; the message names what is missing."""


@dataclass
class Job:
    num: int | None  # None: a single run (`python -m runner` without -m)
    dir: Path
    record: CellRecord | None = None
    problem: str | None = None  # why there is no record

    @property
    def hydra_dir(self) -> Path:
        return self.dir / ".hydra"

    def config(self) -> DictConfig:
        return OmegaConf.load(self.hydra_dir / "config.yaml")

    def overrides(self) -> list[str]:
        path = self.hydra_dir / "overrides.yaml"
        return [str(o) for o in yaml.safe_load(path.read_text()) or []] if path.exists() else []

    def hydra(self) -> dict[str, Any]:
        """The job's saved Hydra config, unresolved (it holds `${now:...}`)."""
        path = self.hydra_dir / "hydra.yaml"
        return (yaml.safe_load(path.read_text()) or {}).get("hydra", {}) if path.exists() else {}

    def store_dir(self, cfg: DictConfig) -> Path:
        """`store_dir` as the job saw it: a relative one is relative to the dir the sweep was launched from."""
        store = Path(str(cfg.store_dir))
        return store if store.is_absolute() else Path(self.hydra().get("runtime", {}).get("cwd", ".")) / store


@dataclass
class Sweep:
    dir: Path
    jobs: list[Job]
    expected_jobs: int | None = None  # what multirun.yaml describes (None: unknown or a single run)

    @property
    def records(self) -> list[CellRecord]:
        return [j.record for j in self.jobs if j.record is not None]

    @property
    def is_multirun(self) -> bool:
        return (self.dir / "multirun.yaml").is_file()

    def baseline(self) -> str | None:
        """The `baseline` build id from the jobs' saved configs, else the fidelity baseline of a record."""
        for job in self.jobs:
            config = job.hydra_dir / "config.yaml"
            if config.exists() and (value := OmegaConf.load(config).get("baseline")):
                return str(value)
        return next((r.fidelity.baseline for r in self.records if r.fidelity), None)

    def require_multirun(self) -> None:
        if not self.is_multirun:
            raise SweepError(f"{self.dir}: not a sweep dir (no multirun.yaml); give the dir `python -m runner -m ...` "
                             "wrote")

    def require_replayable(self) -> None:
        """Raise one SweepError listing every piece a replay needs but is missing or unreadable."""
        self.require_multirun()
        problems = []
        nums = {j.num for j in self.jobs}
        if self.expected_jobs is not None and (missing := sorted(set(range(self.expected_jobs)) - nums)):
            problems.append(f"missing job dirs {', '.join(map(str, missing))} "
                            f"(multirun.yaml describes {self.expected_jobs} jobs)")
        elif not self.jobs:
            problems.append("no job dirs")
        for job in self.jobs:
            problems += [f"missing {job.hydra_dir / f}" for f in ("config.yaml", "overrides.yaml")
                         if not (job.hydra_dir / f).is_file()]
            if job.problem and job.problem != NOT_FINISHED:
                problems.append(job.problem)
        if problems:
            raise SweepError(f"{self.dir}: cannot replay: " + "; ".join(problems))


def saved_hydra(sweep_dir: Path) -> dict[str, Any]:
    """The `hydra` section of a sweep's multirun.yaml (sweeper, launcher, overrides), unresolved."""
    return (yaml.safe_load((Path(sweep_dir) / "multirun.yaml").read_text()) or {}).get("hydra", {})


def expected_jobs(sweep_dir: Path) -> int | None:
    """How many jobs the BasicSweeper launched, from the saved sweeper params and command line (None: unknown)."""
    return job_count(saved_hydra(sweep_dir))


def job_count(hydra: dict[str, Any]) -> int | None:
    """How many jobs the BasicSweeper makes of a Hydra config's sweeper params and task overrides."""
    jobs = job_overrides(hydra)
    return None if jobs is None else len(jobs)


def job_overrides(hydra: dict[str, Any]) -> list[list[str]] | None:
    """Each job's task overrides, in job number order, as the BasicSweeper expands them (None: another sweeper)."""
    sweeper = hydra.get("sweeper") or {}
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    task = (hydra.get("overrides") or {}).get("task") or []
    args = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()] + list(task)
    try:
        batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(args), None)
    except HydraException:
        return None
    return [list(job) for batch in batches for job in batch]


def first_swept_value(sweep_dir: Path, key: str) -> str | None:
    """The value of `key` in the first job of the sweep that sets it (from multirun.yaml), or None."""
    if not (Path(sweep_dir) / "multirun.yaml").is_file():
        return None
    for job in job_overrides(saved_hydra(sweep_dir)) or []:
        for k, value in map(parse_override, job):
            if k == key:
                return value
    return None


def _job(num: int | None, path: Path) -> Job:
    job = Job(num, path)
    result = path / "result.json"
    if not result.exists():
        job.problem = NOT_FINISHED
    else:
        try:
            job.record = read_cell_record(result)
        except ValueError as e:
            job.problem = str(e)
    return job


def load_sweep(path: Path) -> Sweep:
    """The sweep (numbered job dirs) or single run (a dir with result.json or .hydra/) at `path`."""
    path = Path(path)
    if not path.is_dir():
        raise SweepError(f"{path}: no such directory")
    multirun = (path / "multirun.yaml").is_file()
    if not multirun and ((path / "result.json").exists() or (path / ".hydra").is_dir()):
        return Sweep(path, [_job(None, path)])
    dirs = sorted((d for d in path.iterdir() if d.is_dir() and d.name.isdigit()), key=lambda d: int(d.name))
    if not dirs and not multirun:
        raise SweepError(f"{path}: not a sweep or run dir (no multirun.yaml, numbered job dirs or result.json)")
    expected = expected_jobs(path) if multirun else None
    return Sweep(path, [_job(int(d.name), d) for d in dirs], expected)
