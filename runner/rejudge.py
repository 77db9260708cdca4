"""Judge saved generations without any engine: `rejudge` (`python -m runner.replay rejudge`: another judge
or rubric, into a new dir) and `judge_deferred` (the cells a sweep left for the end, judge.where=end, in
place). Both judge through the sweep's own judge stage (`runner.stages.judge.judge_cells`) and write
records with the same `write_record`; a sweep dir copied to another machine re-judges.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from omegaconf import DictConfig, OmegaConf

from runner.cell import load_option
from runner.analysis.collect import collect
from runner.identity import answer_key, find_baseline, is_build, override_key
from runner.judges import make_judge
from runner.records import CellRecord, write_record
from runner.stages.judge import CellToJudge, judge_cells
from runner.store import Store
from runner.sweep import Job, Sweep, SweepError


def judge_section(old: DictConfig, overrides: list[str]) -> DictConfig:
    """The old judge config, or conf/judge/NAME.yaml for `judge=NAME`, with `judge.KEY=VALUE` on top."""
    base, dotlist = old, []
    for item in overrides:
        key, sep, value = item.partition("=")
        if key == "judge" and sep:
            base = OmegaConf.create(load_option("judge", value, resolve=False))  # the key stays ${oc.env:...}
        elif key.startswith("judge.") and sep:
            dotlist.append(item)
        else:
            raise ValueError(f"rejudge takes judge=NAME and judge.KEY=VALUE overrides, got {item!r}")
    return OmegaConf.merge(base, OmegaConf.from_dotlist(dotlist).get("judge", {}))


def _judge_overrides(old: list[str], new: list[str]) -> list[str]:
    """The job's overrides as the re-judged config reads: `judge=NAME` replaces every judge one, `judge.K=V` its key."""
    new_keys = {override_key(o) for o in new}
    whole = "judge" in new_keys
    return [o for o in old if not (override_key(o) in new_keys
                                   or whole and override_key(o).split(".")[0] == "judge")] + list(new)


@dataclass
class _Plan:
    """Jobs judged together: one judge config (one judge, and its server), one store, one concurrency limit."""

    judge: Any
    store: Store
    jobs: list[Job] = field(default_factory=list)
    cells: dict[int | None, CellToJudge] = field(default_factory=dict)


def _store(job: Job, cfg: DictConfig, fallback: Path) -> Store:
    store_dir = job.store_dir(cfg)
    return Store(store_dir if store_dir.is_dir() else fallback, lock=str(cfg.get("store_lock", "file")),
                 lease_s=float(cfg.get("store_lease_s", 60)))


def _plans(sweep: Sweep, jobs: list[Job], configs: dict[int | None, DictConfig], strict: bool) -> list[_Plan]:
    """Group `jobs` by judge config and store; check each judge; find the baseline answers each cell needs.

    strict: a missing baseline cell is an error (nothing written yet); else that cell's judge note says why.
    """
    plans: dict[str, _Plan] = {}
    for job in jobs:
        cfg = configs[job.num]
        judge_cfg = OmegaConf.to_container(cfg.judge, resolve=True)
        key = json.dumps([judge_cfg, str(job.store_dir(cfg))], sort_keys=True, default=str)
        if key not in plans:
            judge = make_judge(cfg.judge)
            if judge is not None:
                judge.check_ready()
            plans[key] = _Plan(judge, _store(job, cfg, sweep.dir / "rejudge-store"))
        plan = plans[key]
        plan.jobs.append(job)
        if job.record is None:
            continue
        rec = copy.deepcopy(job.record)
        try:
            answers = _baseline_answers(job, cfg, sweep.records)
        except SweepError as e:
            if strict:
                raise
            rec.judge_note, rec.judge_pending = str(e), False
            continue
        plan.cells[job.num] = CellToJudge(rec, str(cfg.judge.get("reference", "none")), is_build(rec, str(cfg.baseline)),
                                          answers)
    return list(plans.values())


def _run(plan: _Plan) -> None:
    """Judge every cell of the plan in one batch; each record's judge timing is the batch's."""
    t0 = time.perf_counter()
    with plan.judge if plan.judge is not None else contextlib.nullcontext():
        judge_cells(plan.judge, plan.store, list(plan.cells.values()))
    for c in plan.cells.values():
        c.record.timings.pop("judge", None)
        if plan.judge is not None:
            c.record.timings["judge"] = round(time.perf_counter() - t0, 4)


def rejudge(sweep: Sweep, overrides: list[str], out: Path | None = None) -> tuple[Path, pd.DataFrame]:
    """Score the saved generations with another judge or rubric; write records + matrix + report into `out`."""
    sweep.require_replayable()
    configs = {}
    for job in sweep.jobs:
        cfg = job.config()
        cfg.judge = judge_section(cfg.judge, overrides)
        configs[job.num] = cfg
    plans = _plans(sweep, sweep.jobs, configs, strict=True)  # what fails on the user's input fails before writing
    out = out or sweep.dir / f"rejudge-{next(iter(configs.values())).judge.name}"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(sweep.dir / "multirun.yaml", out / "multirun.yaml")
    for plan in plans:
        _run(plan)
        for job in plan.jobs:
            _write_job(job, configs[job.num], overrides, out, plan.cells.get(job.num))
    return out, collect(out)


def judge_deferred(sweep: Sweep) -> int:
    """Judge, in this process, every cell a sweep left for the end (judge.where=end); rewrite their records.

    One judge per judge config and store, all of its cells in one batch under its one concurrency limit.
    Returns how many cells were judged or given a reason why not.
    """
    jobs = [j for j in sweep.jobs if j.record is not None and j.record.judge_pending]
    if not jobs:
        return 0
    plans = _plans(sweep, jobs, {j.num: j.config() for j in jobs}, strict=False)
    for plan in plans:
        _run(plan)
    for plan in plans:
        for job in plan.jobs:
            rec = plan.cells[job.num].record if job.num in plan.cells else job.record
            write_record(rec, job.dir)
    return len(jobs)


def _baseline_answers(job: Job, cfg: DictConfig, records: list[CellRecord]) -> dict[tuple[str, int], str] | None:
    """Answers of the sweep's own baseline cell, when the judge wants them as references."""
    wants = cfg.judge.get("reference", "none") == "baseline" or cfg.judge.get("mode") == "pairwise"
    if job.record is None or not job.record.results or not wants:
        return None
    if is_build(job.record, str(cfg.baseline)):
        return None  # the baseline cell is not graded against itself
    base = find_baseline(job.record, records, str(cfg.baseline))
    if base is None:
        raise SweepError(f"judge.reference=baseline / judge.mode=pairwise: the sweep has no ok {cfg.baseline} cell "
                         f"for job {job.num} ({job.record.cell.format} {job.record.cell.precision}); use "
                         "judge.reference=none or prompt and judge.mode=absolute")
    return {answer_key(r): r.answer for r in base.results}


def _write_job(job: Job, cfg: DictConfig, overrides: list[str], out: Path, judged: CellToJudge | None) -> None:
    new_dir = out / str(job.num)
    shutil.copytree(job.hydra_dir, new_dir / ".hydra", dirs_exist_ok=True)
    OmegaConf.save(cfg, new_dir / ".hydra" / "config.yaml")
    new_overrides = _judge_overrides(job.overrides(), overrides)
    (new_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(new_overrides))
    if job.record is None:
        return
    rec = judged.record if judged is not None else copy.deepcopy(job.record)
    rec.cell.judge, rec.cell.overrides = str(cfg.judge.name), new_overrides
    write_record(rec, new_dir)
