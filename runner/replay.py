"""Replay saved sweeps: re-run them, re-judge their generations, or rebuild their matrix and report.

python -m runner.replay reproduce SWEEP_DIR [--fresh | --from-cache] [--out DIR]   re-run every cell, compare
python -m runner.replay rejudge SWEEP_DIR judge=NAME [judge.KEY=VALUE ...] [--out DIR]
python -m runner.replay collect SWEEP_DIR [--max-kld X] [--min-top1 Y]   matrix + report from records alone

Only `reproduce` loads engines; `collect` and `rejudge` work on a sweep dir copied to a machine without them.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from runner.cell import load_option
from runner.collect import collect, find_job_dirs
from runner.identity import find_baseline, is_build, override_key
from runner.judges.base import make_judge
from runner.judging import judge_cell
from runner.metrics.stats import paired_prompt_delta
from runner.records import CellRecord, read_cell_record, to_json, write_text_atomic
from runner.secrets import check_overrides
from runner.report import MAX_KLD, MIN_TOP1, fmt
from runner.store import Store
from runner.summary import DELTAS

class SweepError(ValueError):
    """A sweep dir replay cannot use; the message names what is missing."""


@dataclass
class Job:
    num: int
    dir: Path
    record: CellRecord | None  # None: the job never finished

    @property
    def hydra_dir(self) -> Path:
        return self.dir / ".hydra"

    def config(self) -> DictConfig:
        return OmegaConf.load(self.hydra_dir / "config.yaml")

    def overrides(self) -> list[str]:
        return [str(o) for o in yaml.safe_load((self.hydra_dir / "overrides.yaml").read_text()) or []]

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

    @property
    def records(self) -> list[CellRecord]:
        return [j.record for j in self.jobs if j.record is not None]


def expected_jobs(multirun_yaml: Path) -> int | None:
    """How many jobs the BasicSweeper launched, from the saved sweeper params and command line (None: unknown)."""
    hydra = (yaml.safe_load(multirun_yaml.read_text()) or {}).get("hydra", {})
    sweeper = hydra.get("sweeper") or {}
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    task = (hydra.get("overrides") or {}).get("task") or []
    args = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()] + list(task)
    try:
        batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(args), None)
    except HydraException:
        return None
    return sum(len(b) for b in batches)


def load_sweep(path: Path, need_configs: bool = True) -> Sweep:
    """A saved `python -m runner -m` sweep; one SweepError listing every missing or unreadable piece."""
    path = Path(path)
    if not path.is_dir():
        raise SweepError(f"{path}: no such directory")
    if not (path / "multirun.yaml").is_file():
        raise SweepError(f"{path}: not a sweep dir (no multirun.yaml); give the dir `python -m runner -m ...` wrote")
    nums = [int(d.name) for d in find_job_dirs(path)]
    expected = expected_jobs(path / "multirun.yaml")
    problems = []
    if expected is not None and (missing := sorted(set(range(expected)) - set(nums))):
        problems.append(f"missing job dirs {', '.join(map(str, missing))} (multirun.yaml describes {expected} jobs)")
    elif not nums:
        problems.append("no job dirs")
    jobs = []
    for n in nums:
        job = Job(n, path / str(n), None)
        if need_configs:
            problems += [f"missing {job.hydra_dir / f}" for f in ("config.yaml", "overrides.yaml")
                         if not (job.hydra_dir / f).is_file()]
        if (job.dir / "result.json").exists():
            try:
                job.record = read_cell_record(job.dir / "result.json")
            except ValueError as e:
                problems.append(str(e))
        jobs.append(job)
    if problems:
        raise SweepError(f"{path}: cannot replay: " + "; ".join(problems))
    return Sweep(path, jobs)


def _prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise SweepError(f"{out}: already exists and is not empty; choose another --out")
    out.mkdir(parents=True, exist_ok=True)


# ------------------------------------------------------------------ reproduce


@dataclass
class CellDiff:
    label: str
    reproduced: bool = True  # status, greedy generations and fidelity all match
    matches: list[str] = field(default_factory=list)
    differs: list[str] = field(default_factory=list)

    def line(self) -> str:
        mark = "✓" if self.reproduced else "✗"
        differs = f" — differs: {'; '.join(self.differs)}" if self.differs else ""
        return f"{mark} {self.label}: {'; '.join(self.matches) or '–'}{differs}"


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-9) or (math.isnan(a) and math.isnan(b))


def compare(old: CellRecord | None, new: CellRecord, label: str) -> CellDiff:
    """What a re-run reproduced: status, generations (greedy must be identical), fidelity, judge, speed."""
    diff = CellDiff(label)
    if old is None:
        diff.reproduced = new.status != "failed"
        (diff.differs if new.status == "failed" else diff.matches).append(
            f"not finished before, now {new.status}" + (f" ({new.reason})" if new.reason else ""))
        return diff
    if old.status != new.status:
        diff.reproduced = False
        diff.differs.append(f"status {old.status} → {new.status} ({new.reason or old.reason})")
        return diff
    if new.status != "ok":
        diff.matches.append(f"{new.status} again")
        return diff
    old_by = {(r.prompt_id, r.repeat): r for r in old.results}
    pairs = [(old_by.get((r.prompt_id, r.repeat)), r) for r in new.results]
    same = sum(o is not None and o.generation.token_ids == n.generation.token_ids for o, n in pairs)
    greedy = new.contract is not None and new.contract.sampler.temperature == 0
    kind = "greedy" if greedy else "sampled"
    if same == len(pairs) == len(old.results):
        diff.matches.append(f"{kind} generations identical ({same}/{len(pairs)})")
    else:
        diff.reproduced = diff.reproduced and not greedy
        diff.differs.append(f"{kind} generations: only {same} of {len(old.results)} identical")
    if old.fidelity or new.fidelity:
        keys = ("kld_mean", "top1_pct", "ppl")
        values = [(getattr(old.fidelity, k, None), getattr(new.fidelity, k, None)) for k in keys]
        if all(_same(a, b) for a, b in values):
            diff.matches.append("fidelity identical")
        else:
            diff.reproduced = False
            changes = ", ".join(f"{k} {fmt(a)} → {fmt(b)}" for k, (a, b) in zip(keys, values))
            diff.differs.append(f"fidelity {changes}")
    old_scores = [o.judgment.scores if o and o.judgment else None for o, _ in pairs]
    new_scores = [n.judgment.scores if n.judgment else None for _, n in pairs]
    if any(old_scores) or any(new_scores):
        changed = sum(a != b for a, b in zip(old_scores, new_scores))
        if not changed:
            diff.matches.append(f"judge scores identical ({len(pairs)}/{len(pairs)})")
        else:  # an LLM judge re-asked need not repeat itself: reported, not a failure
            diff.differs.append(f"judge scores changed on {changed} of {len(pairs)} answers (judge noise)")
    within_noise, speed = _speed(pairs)
    (diff.matches if within_noise else diff.differs).append(speed)  # speed is reported, never a failure
    return diff


def _speed(pairs: list[tuple[Any, Any]]) -> tuple[bool, str]:
    """(within noise, description): paired per-prompt gen tok/s, new − old, relative to the old mean."""
    if all(n.cache_hit for _, n in pairs):
        return True, "speed not re-measured (all generations from the cache)"
    get = DELTAS["gen_tps"]
    old: dict[str, list[float]] = {}
    new: dict[str, list[float]] = {}
    for o, n in sorted(pairs, key=lambda p: (p[1].prompt_id, p[1].repeat)):
        old.setdefault(n.prompt_id, []).append(get(o) if o else math.nan)
        new.setdefault(n.prompt_id, []).append(get(n))
    d = paired_prompt_delta(old, new)
    valid = [x for v in old.values() for x in v if not math.isnan(x)]
    if not d["n"] or not valid:
        return True, "speed not comparable (no answer longer than one token)"
    base = sum(valid) / len(valid)
    ci = f" [{100 * d['lo'] / base:+.1f}%, {100 * d['hi'] / base:+.1f}%]" if not math.isnan(d["lo"]) else ""
    pct = f"{100 * d['delta'] / base:+.1f}%{ci}, sign-flip p={d['p']:.2g}"
    if d["p"] <= 0.05:
        return False, f"gen tok/s changed beyond noise ({pct})"
    return True, f"gen tok/s within noise ({pct})"


REFRESH_ON_REPRODUCE = frozenset({"generations", "fidelity-ref", "fidelity"})


def reproduce(sweep: Sweep, out: Path, fresh: bool = False, from_cache: bool = False,
              quiet: bool = False) -> list[CellDiff]:
    """Re-run every job from its saved config into `out` (a new sweep dir), collect it, compare with the old.

    Default: every answer is regenerated and fidelity recomputed (artifacts come from the store);
    `fresh`: a new empty store, so artifacts are rebuilt too; `from_cache`: the caches are replayed and
    nothing is re-run (a check of the records, not of the engines).
    """
    from runner.cell import Cell  # only reproduce needs the pipeline (and, through it, the engines)
    from runner.pipeline import run_cell
    from runner.progress import Progress

    if fresh and from_cache:
        raise ValueError("--fresh and --from-cache exclude each other")
    _prepare_out(out)
    shutil.copy2(sweep.dir / "multirun.yaml", out / "multirun.yaml")
    refresh = frozenset() if from_cache else REFRESH_ON_REPRODUCE
    diffs = []
    for i, job in enumerate(sweep.jobs, 1):
        cfg = job.config()
        cfg.store_dir = str((out / "store").resolve() if fresh else job.store_dir(cfg).resolve())
        os.environ.update({k: str(v) for k, v in (job.hydra().get("job", {}).get("env_set") or {}).items()})
        new_dir = out / str(job.num)
        shutil.copytree(job.hydra_dir, new_dir / ".hydra")
        OmegaConf.save(cfg, new_dir / ".hydra" / "config.yaml")  # with the store this run used
        label = f"#{job.num}" + (f" {job.record.cell.format} {job.record.cell.precision}" if job.record else "")
        try:
            cell = Cell.from_config(cfg, job.overrides(), job.num)
        except Exception as e:  # noqa: BLE001 - a job that cannot even be configured is not reproduced
            diffs.append(CellDiff(label, False, differs=[f"cannot run the saved config: {type(e).__name__}: {e}"]))
            continue
        progress = Progress(f"[{i}/{len(sweep.jobs)}] {cell.identity.format} × {cell.identity.precision}", quiet=quiet)
        try:
            record = run_cell(cell, new_dir, progress, refresh=refresh)
        finally:
            progress.close()
        diffs.append(compare(job.record, record, f"#{job.num} {record.cell.format} {record.cell.precision}"))
    collect(out)
    mode = ("replayed from the caches: nothing re-run" if from_cache else
            "everything rebuilt in a new store" if fresh else "answers regenerated and fidelity recomputed")
    (out / "reproduce.md").write_text(f"# Reproduction of {sweep.dir}\n\n{mode[0].upper() + mode[1:]}.\n\n"
                                      + "".join(f"- {d.line()}\n" for d in diffs))
    return diffs


# ------------------------------------------------------------------ rejudge


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
    return {(r.prompt_id, r.repeat): r.answer for r in base.results}


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
    if (job.dir / "generations.jsonl").exists():  # generations are unchanged
        shutil.copy2(job.dir / "generations.jsonl", new_dir / "generations.jsonl")
    write_text_atomic(new_dir / "result.json", to_json(rec))


# ------------------------------------------------------------------ CLI


def _summary(df: pd.DataFrame, where: Path) -> str:
    counts = ", ".join(f"{n} {s}" for s, n in df["status"].value_counts().items())
    failed = "".join(f"\n  failed: {r.format} {r.precision}: {r.reason}"
                     for r in df.itertuples() if r.status == "failed")
    return f"{len(df)} cells ({counts}) → {where / 'matrix.md'}, {where / 'report.md'}{failed}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.replay", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress of the stages")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("reproduce", help="re-run every cell of a saved sweep from its saved configs and compare")
    p.add_argument("sweep_dir", type=Path)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--fresh", action="store_true", help="also rebuild the artifacts: a new empty store in OUT/store")
    mode.add_argument("--from-cache", action="store_true",
                      help="replay the generation and fidelity caches: nothing is re-run")
    p.add_argument("--out", type=Path, help="new sweep dir (default: SWEEP_DIR-reproduce-<time> beside it)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p = sub.add_parser("rejudge", help="score saved generations with another judge or rubric")
    p.add_argument("sweep_dir", type=Path)
    p.add_argument("overrides", nargs="+", metavar="judge=NAME|judge.KEY=VALUE")
    p.add_argument("--out", type=Path, help="default: SWEEP_DIR/rejudge-<judge name>")
    p = sub.add_parser("collect", help="rebuild matrix and report from the records alone (no engine imported)")
    p.add_argument("sweep_dir", type=Path)
    p.add_argument("--max-kld", type=float, default=MAX_KLD, help=f"recommendation threshold (default {MAX_KLD})")
    p.add_argument("--min-top1", type=float, default=MIN_TOP1,
                   help=f"recommendation threshold, %% (default {MIN_TOP1})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        if args.command == "collect":
            sweep = load_sweep(args.sweep_dir, need_configs=False)
            df = collect(sweep.dir, max_kld=args.max_kld, min_top1=args.min_top1)
            print(_summary(df, sweep.dir))
            return 0
        if args.command == "rejudge":
            check_overrides(args.overrides)  # before anything is read or written
        sweep = load_sweep(args.sweep_dir)
        if args.command == "rejudge":
            out, df = rejudge(sweep, args.overrides, args.out)
            print(_summary(df, out))
            return 0
        stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        out = args.out or sweep.dir.with_name(f"{sweep.dir.name}-reproduce-{stamp}")
        diffs = reproduce(sweep, out, fresh=args.fresh, from_cache=args.from_cache, quiet=args.quiet)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for d in diffs:
        print(d.line())
    ok = all(d.reproduced for d in diffs)
    verdict = "reproduced" if ok else "NOT reproduced"
    how = " from the caches, nothing re-run" if args.from_cache else ""
    print(f"{verdict}{how}: {len(diffs)} cells → {out} (comparison in {out / 'reproduce.md'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
