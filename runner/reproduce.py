"""Re-run a saved sweep from its saved configs and say what reproduced: `python -m runner.replay reproduce`.

The only replay verb that runs engines (through runner/pipeline.py); `replay.py` imports it on demand.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from runner.analysis.collect import collect
from runner.identity import answer_key
from runner.analysis.matrix_stats import DELTAS
from runner.metrics.paired import paired_prompt_delta
from runner.pipeline import run_cell
from runner.records import CellRecord
from runner.analysis.report import fmt
from runner.stages import fidelity, generate
from runner import progress
from runner.cell import Cell
from runner.progress import SweepMonitor
from runner.store import Refresh
from runner.sweep import Job, Sweep, SweepError


def prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise SweepError(f"{out}: already exists and is not empty; choose another --out")
    out.mkdir(parents=True, exist_ok=True)


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
    old_by = {answer_key(r): r for r in old.results}
    pairs = [(old_by.get(answer_key(r)), r) for r in new.results]
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
    old_scores = [[j.scores for j in o.judgments] if o else None for o, _ in pairs]
    new_scores = [[j.scores for j in n.judgments] for _, n in pairs]
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
    if not d.n or not valid:
        return True, "speed not comparable (no answer longer than one token)"
    base = sum(valid) / len(valid)
    ci = f" [{100 * d.lo / base:+.1f}%, {100 * d.hi / base:+.1f}%]" if not math.isnan(d.lo) else ""
    pct = f"{100 * d.delta / base:+.1f}%{ci}" + (f", p={d.p:.2g}" if not math.isnan(d.p) else "")
    if d.p <= 0.05:
        return False, f"gen tok/s changed beyond noise ({pct})"
    return True, f"gen tok/s within noise ({pct})"


REFRESH_ON_REPRODUCE = frozenset({generate.KIND, fidelity.BASELINE_KIND, fidelity.SCORE_KIND})


def reproduce(sweep: Sweep, out: Path, fresh: bool = False, from_cache: bool = False,
              quiet: bool = False) -> list[CellDiff]:
    """Re-run every job from its saved config into `out` (a new sweep dir), collect it, compare with the old.

    Default: every answer is regenerated and fidelity recomputed (artifacts come from the store);
    `fresh`: a new empty store, so artifacts are rebuilt too; `from_cache`: the caches are replayed and
    nothing is re-run (a check of the records, not of the engines).
    """
    if fresh and from_cache:
        raise ValueError("--fresh and --from-cache exclude each other")
    sweep.require_replayable()
    prepare_out(out)
    shutil.copy2(sweep.dir / "multirun.yaml", out / "multirun.yaml")
    refresh = Refresh(frozenset() if from_cache else REFRESH_ON_REPRODUCE)  # one run: shared by every cell
    diffs = []
    out_console = progress.console()
    with SweepMonitor(out, len(sweep.jobs), out_console, progress.display_mode(quiet, out_console)):
        for job in sweep.jobs:
            diffs.append(_reproduce_job(job, out, fresh, refresh))
    collect(out)
    mode = ("replayed from the caches: nothing re-run" if from_cache else
            "everything rebuilt in a new store" if fresh else "answers regenerated and fidelity recomputed")
    (out / "reproduce.md").write_text(f"# Reproduction of {sweep.dir}\n\n{mode[0].upper() + mode[1:]}.\n\n"
                                      + "".join(f"- {d.line()}\n" for d in diffs))
    return diffs


def _reproduce_job(job: Job, out: Path, fresh: bool, refresh: Refresh) -> CellDiff:
    """Re-run one job from its saved config into `out/<num>` and compare with its old record."""
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
        return CellDiff(label, False, differs=[f"cannot run the saved config: {type(e).__name__}: {e}"])
    record = run_cell(cell, new_dir, refresh=refresh)
    return compare(job.record, record, f"#{job.num} {record.cell.format} {record.cell.precision}")
