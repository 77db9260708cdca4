"""Score a saved sweep's generations with another judge or rubric: `python -m runner.replay rejudge`.

Needs no engine: a sweep dir copied to another machine re-judges. Each job is judged by the same judge
stage as in a sweep (`runner.stages.judge.judge_cell`) and written with the same `write_record`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from omegaconf import DictConfig, OmegaConf

from runner.cell import load_option
from runner.collect import collect
from runner.identity import answer_key, find_baseline, is_build, override_key
from runner.judges import make_judge
from runner.records import CellRecord, write_record
from runner.stages.judge import judge_cell
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


def rejudge(sweep: Sweep, overrides: list[str], out: Path | None = None) -> tuple[Path, pd.DataFrame]:
    """Score the saved generations with another judge or rubric; write records + matrix + report into `out`."""
    sweep.require_replayable()
    configs = {}
    for job in sweep.jobs:
        cfg = job.config()
        cfg.judge = judge_section(cfg.judge, overrides)
        configs[job.num] = cfg
    groups: dict[str, list[Job]] = {}  # jobs sharing one judge config share one judge (and its server)
    for job in sweep.jobs:
        key = json.dumps(OmegaConf.to_container(configs[job.num].judge, resolve=True), sort_keys=True, default=str)
        groups.setdefault(key, []).append(job)
    plans = []  # everything that can fail on the user's input fails here, before anything is written
    for jobs in groups.values():
        judge = make_judge(configs[jobs[0].num].judge)
        if judge is not None:
            judge.check_ready()
        plans.append((judge, jobs, {job.num: _baseline_answers(job, configs[job.num], sweep.records) for job in jobs}))
    out = out or sweep.dir / f"rejudge-{next(iter(configs.values())).judge.name}"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(sweep.dir / "multirun.yaml", out / "multirun.yaml")
    for judge, jobs, baselines in plans:
        with judge if judge is not None else contextlib.nullcontext():
            for job in jobs:
                _write_job(job, configs[job.num], overrides, out, judge, baselines[job.num], sweep.dir)
    return out, collect(out)


def _baseline_answers(job: Job, cfg: DictConfig, records: list[CellRecord]) -> dict[tuple[str, int], str] | None:
    """Answers of the sweep's own baseline cell, when the judge wants them as references."""
    if job.record is None or not job.record.results or cfg.judge.get("reference", "none") != "baseline":
        return None
    if is_build(job.record, str(cfg.baseline)):
        return None  # the baseline cell is not graded against itself
    base = find_baseline(job.record, records, str(cfg.baseline))
    if base is None:
        raise SweepError(f"judge.reference=baseline: the sweep has no ok {cfg.baseline} cell for job {job.num} "
                         f"({job.record.cell.format} {job.record.cell.precision}); use judge.reference=none or prompt")
    return {answer_key(r): r.answer for r in base.results}


def _write_job(job: Job, cfg: DictConfig, overrides: list[str], out: Path, judge: Any,
               baseline_answers: dict[tuple[str, int], str] | None, sweep_dir: Path) -> None:
    new_dir = out / str(job.num)
    shutil.copytree(job.hydra_dir, new_dir / ".hydra", dirs_exist_ok=True)
    OmegaConf.save(cfg, new_dir / ".hydra" / "config.yaml")
    new_overrides = _judge_overrides(job.overrides(), overrides)
    (new_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(new_overrides))
    if job.record is None:
        return
    rec = copy.deepcopy(job.record)
    rec.cell.judge, rec.cell.overrides = str(cfg.judge.name), new_overrides
    rec.timings.pop("judge", None)
    store_dir = job.store_dir(cfg)
    store = Store(store_dir if store_dir.is_dir() else sweep_dir / "rejudge-store")
    t0 = time.perf_counter()
    judge_cell(judge, store, rec, str(cfg.judge.get("reference", "none")), is_build(rec, str(cfg.baseline)),
               baseline_answers)
    if judge is not None:
        rec.timings["judge"] = round(time.perf_counter() - t0, 4)
    write_record(rec, new_dir)
