"""run_cell: the one place the stages are ordered.

validate → resolve model → prepare artifact → generate → (speed=bench: bench) → baseline answers → judge →
fidelity → record.
A skipped or failed cell is still a record (with its reason); whatever was computed before a failure
stays in the record and in the store.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import traceback
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from runner import versions
from runner.backends import text_codec
from runner.cell import Cell
from runner.context import CellContext
from runner.contract import ChatRenderer
from runner.host import host_info, measured_on
from runner.identity import answer_key
from runner.judges import make_judge
from runner.metrics.fidelity import answer_agreement
from runner.model_source import resolve_model
from runner.progress import CellProgress, cell_label
from runner.prompts import load_prompts
from runner.records import CellRecord, PromptResult, write_record
from runner.speed import speed_stats
from runner.stages.bench import run_bench
from runner.stages.check import check_answers
from runner.stages.fidelity import run_fidelity
from runner.stages.generate import GenerationStage
from runner.stages.judge import JUDGED_AT_END, judge_cell
from runner.stages.prepare import prepare_build
from runner.store import Refresh, Store

log = logging.getLogger(__name__)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class CellRun:
    """State of one cell while its stages run."""

    def __init__(self, cell: Cell, job_dir: Path, progress: CellProgress, refresh: Refresh | None = None,
                 parallel_jobs: int = 1, judge_at_end: bool = False):
        self.cell, self.job_dir, self.progress = cell, job_dir, progress
        self.refresh, self.parallel_jobs, self.judge_at_end = refresh, parallel_jobs, judge_at_end
        self.record = CellRecord(cell=cell.identity, status="ok", started_at=_now())
        self.stack = ExitStack()

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        t0, wall0 = time.perf_counter(), time.time()
        self.progress.stage(stage)
        try:
            yield
        finally:
            self.record.timings[stage] = round(time.perf_counter() - t0, 4)
            self.record.windows[stage] = [round(wall0, 3), round(time.time(), 3)]

    def run(self) -> CellRecord:
        cell, rec = self.cell, self.record
        rec.versions = versions.collect()
        rec.margins = dict(cell.margins)
        rec.host = host_info()
        t0 = time.time()
        with self.stack:
            try:
                reason = cell.invalid_reason()
                if reason:
                    rec.status, rec.reason = "skipped", reason
                    log.info("skipped: %s", reason)
                    return rec
                self._run_stages()
            except Exception as e:  # a failure is a record with its reason, never a crash without one
                rec.status, rec.reason = "failed", f"{type(e).__name__}: {e}"
                log.error("cell %s × %s failed: %s", cell.identity.format, cell.identity.precision, rec.reason)
                log.debug("%s", traceback.format_exc())
            finally:
                tag = measured_on(rec.host, rec.runtime) if rec.runtime else None
                rec.speed = speed_stats(rec.results, tag)
                rec.finished_at = _now()
                rec.windows["cell"] = [round(t0, 3), round(time.time(), 3)]
                write_record(rec, self.job_dir)
        return rec

    def _context(self) -> CellContext:
        cell = self.cell
        prompts = load_prompts(cell.prompts)
        store = Store(cell.store_dir, refresh=self.refresh, lock=cell.store_lock, lease_s=cell.store_lease_s,
                      user=self.job_dir.resolve())
        with self.timed("resolve_model"):
            source_dir, self.record.source = resolve_model(cell.model, store)
        renderer = ChatRenderer(source_dir, bool(cell.generation.get("enable_thinking", False)), chat=cell.chat(),
                                template=cell.model.get("chat_template"), codec=text_codec(self.record.source))
        return CellContext(cell=cell, store=store, source_dir=source_dir, source=self.record.source,
                           renderer=renderer, stop_ids=renderer.stop_token_ids(),
                           strip_thinking=bool(cell.generation.get("strip_thinking", True)), prompts=prompts,
                           rendered={p.id: renderer.render(p.prompt) for p in prompts}, host=self.record.host,
                           parallel_jobs=self.parallel_jobs)

    def _run_stages(self) -> None:
        cell, rec = self.cell, self.record
        cell.validate()
        judge = make_judge(cell.judge)
        if judge is not None and not self.judge_at_end:
            judge.check_ready()  # e.g. a missing API key fails before any generation
        ctx = self._context()
        rec.contract = ctx.renderer.contract(cell.sampler(), ctx.stop_ids, ctx.strip_thinking)
        with self.timed("prepare"):
            backend, rec.artifact = prepare_build(ctx, cell.format, cell.precision_config(), cell.method)
        if cell.precision.get("prebuilt"):  # a published quant must see the prompts as the model does
            backend.check_prompt_ids(rec.artifact, ctx.rendered)
        own = self.stack.enter_context(GenerationStage(ctx, backend, rec.artifact, cell.format))
        rec.runtime = own.runtime
        with self.timed("generate"):
            self.progress.start_items(len(ctx.prompts) * cell.repeats)
            rec.results = own.run(on_done=lambda r: self.progress.advance(r.generation, r.cache_hit))
        if any(p.check is not None for p in ctx.prompts):
            with self.timed("check"):
                check_answers(ctx.store, ctx.prompts, rec.results)
        if cell.speed.get("name") == "bench":  # llama-bench's protocol while this build is loaded
            with self.timed("bench"):
                rec.bench = run_bench(ctx, own, cell.speed)
        mode = str(cell.judge.get("reference", "none")) if judge is not None else "none"
        is_baseline = cell.is_build(cell.baseline)
        in_cell = judge is not None and not self.judge_at_end
        wants_answers = mode == "baseline" or cell.judge.get("mode") == "pairwise"
        baseline = None if is_baseline else self._baseline_answers(ctx, own, needed=in_cell and wants_answers)
        if baseline is not None:
            for r in rec.results:
                if (ref := baseline.get(answer_key(r))) is not None:
                    r.agreement = answer_agreement(ref.generation.token_ids, r.generation.token_ids)
        if in_cell:
            answers = {k: r.answer for k, r in baseline.items()} if baseline else None
            with self.timed("judge"), judge:
                judge_cell(judge, ctx.store, rec, mode, is_baseline, answers)
        elif judge is not None:
            rec.judge_reference, rec.judge_note, rec.judge_pending = mode, JUDGED_AT_END, True
        if cell.fidelity.get("enabled"):
            with self.timed("fidelity"):
                name = str(cell.fidelity.get("baseline") or cell.baseline)
                rec.fidelity = run_fidelity(ctx.store, cell.fidelity, ctx.renderer, own,
                                            self._build_stage(ctx, name, own), name)

    def _build_stage(self, ctx: CellContext, build: str, own: GenerationStage) -> GenerationStage:
        """The generation stage of another build such as `gguf_fp16` (this cell's own if it is that build)."""
        if self.cell.is_build(build):
            return own
        fmt_cfg, prec_cfg, method_cfg = self.cell.build_configs(build)
        backend, artifact = prepare_build(ctx, fmt_cfg, prec_cfg, method_cfg)
        return self.stack.enter_context(GenerationStage(ctx, backend, artifact, fmt_cfg))

    def _baseline_answers(self, ctx: CellContext, own: GenerationStage,
                          needed: bool) -> dict[tuple[str, int], PromptResult] | None:
        """The baseline build's answers (reference answers for the judge, answer agreement), by answer key."""
        cell = self.cell
        if not (needed or cell.fidelity.get("enabled")):
            return None
        with self.timed("baseline"):
            stage = self._build_stage(ctx, cell.baseline, own)
            own.close()  # one model in memory at a time; reloaded lazily if fidelity needs it
            results = stage.run()
            stage.close()
            return {answer_key(r): r for r in results}


def run_cell(cell: Cell, job_dir: Path, refresh: Refresh | None = None, parallel_jobs: int = 1,
             judge_at_end: bool = False) -> CellRecord:
    """Run one cell into `job_dir`. `refresh`: what to recompute instead of reuse (replay reproduce, shared by its cells);
    `judge_at_end`: leave judging to the submitting process (judge.where=end)."""
    ident = cell.identity
    progress = CellProgress(job_dir, cell_label(ident.format, ident.precision, ident.artifact, ident.method))
    try:
        return CellRun(cell, job_dir, progress, refresh, parallel_jobs, judge_at_end).run()
    finally:
        progress.close()
