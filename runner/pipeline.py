"""run_cell: the one place the stages are ordered.

validate → resolve model → prepare artifact → generate → baseline answers → judge → fidelity → record.
A skipped or failed cell is still a record (with its reason); whatever was computed before a failure
stays in the record and in the store.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import time
import traceback
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from runner import versions
from runner.backends import get_backend
from runner.cell import Cell
from runner.contract import ChatRenderer, RenderedPrompt
from runner.generation import GenerationStage
from runner.judges.base import make_judge
from runner.judging import apply_judge
from runner.metrics.fidelity import answer_agreement
from runner.model_source import resolve_model
from runner.progress import Progress
from runner.prompts import Prompt, load_prompts
from runner.records import CellRecord, FidelityResult, PromptResult, from_dict, to_json, write_text_atomic
from runner.speed import speed_stats
from runner.store import Store

log = logging.getLogger(__name__)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def write_record(record: CellRecord, job_dir: Path) -> None:
    job_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"prompt_id": r.prompt_id, "category": r.category, "repeat": r.repeat, "answer": r.answer,
                         "text": r.generation.text, "finish_reason": r.generation.finish_reason,
                         "completion_tokens": r.generation.completion_tokens, "generation_key": r.generation_key})
             for r in record.results]
    write_text_atomic(job_dir / "generations.jsonl", "".join(line + "\n" for line in lines))
    write_text_atomic(job_dir / "result.json", to_json(record))


class CellRun:
    """State of one cell while its stages run."""

    def __init__(self, cell: Cell, job_dir: Path, progress: Progress):
        self.cell, self.job_dir, self.progress = cell, job_dir, progress
        self.record = CellRecord(cell=cell.identity, status="ok", started_at=_now())
        self.stack = ExitStack()

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        self.progress.stage(stage)
        try:
            yield
        finally:
            self.record.timings[stage] = round(time.perf_counter() - t0, 4)

    def run(self) -> CellRecord:
        cell, rec = self.cell, self.record
        rec.versions = versions.collect()
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
                rec.speed = speed_stats(rec.results)
                rec.finished_at = _now()
                write_record(rec, self.job_dir)
        return rec

    def _run_stages(self) -> None:
        cell, rec = self.cell, self.record
        cell.validate()
        prompts = load_prompts(cell.prompts)
        store = Store(cell.store_dir)
        judge = make_judge(cell.judge)
        if judge is not None:
            judge.check_ready()  # e.g. a missing API key fails before any generation
        with self.timed("resolve_model"):
            source_dir, rec.source = resolve_model(cell.model, store)
        renderer = ChatRenderer(source_dir, bool(cell.generation.get("enable_thinking", False)))
        stop_ids = renderer.stop_token_ids()
        strip = bool(cell.generation.get("strip_thinking", True))
        rec.contract = renderer.contract(cell.sampler(), stop_ids, strip)
        rendered = {p.id: renderer.render(p.prompt) for p in prompts}
        backend = get_backend(cell.format["name"])
        rec.runtime = {"format": cell.format, **backend.runtime_key(cell.format)}
        with self.timed("prepare"):
            rec.artifact = backend.prepare(source_dir, rec.source, cell.precision, cell.format, store)
        gen = self.stack.enter_context(
            GenerationStage(backend, rec.artifact, cell.format, renderer, stop_ids, store, strip))
        with self.timed("generate"):
            self.progress.start_items(len(prompts) * cell.repeats)
            rec.results = gen.run(prompts, rendered, cell.sampler, cell.repeats, on_done=self.progress.advance)
        baseline = self._baseline(source_dir, store, renderer, stop_ids, strip, prompts, rendered, gen)
        if baseline is not None:
            for r in rec.results:
                ref = baseline.get((r.prompt_id, r.repeat))
                if ref is not None:
                    r.agreement = answer_agreement(ref.generation.token_ids, r.generation.token_ids)
        if judge is not None:
            answers = {k: r.answer for k, r in baseline.items()} if baseline else None
            with self.timed("judge"), judge:
                apply_judge(judge, store, rec.results, cell.judge.get("reference", "none"), answers)
        if cell.fidelity.get("enabled"):
            with self.timed("fidelity"):
                self._fidelity(source_dir, store, renderer, gen)

    def _reference_stage(self, reference: str, source_dir: Path, store: Store, renderer: ChatRenderer,
                         stop_ids: list[int], strip: bool, own: GenerationStage) -> GenerationStage:
        """The generation stage of a reference cell such as `gguf_fp16` (this cell's own if it is that cell)."""
        if self.cell.is_reference(reference):
            return own
        fmt_cfg, prec_cfg = self.cell.reference_configs(reference)
        backend = get_backend(fmt_cfg["name"])
        artifact = backend.prepare(source_dir, self.record.source, prec_cfg, fmt_cfg, store)
        return self.stack.enter_context(GenerationStage(backend, artifact, fmt_cfg, renderer, stop_ids, store, strip))

    def _baseline(self, source_dir, store, renderer, stop_ids, strip, prompts: list[Prompt],
                  rendered: dict[str, RenderedPrompt], own: GenerationStage) -> dict[tuple[str, int], PromptResult] | None:
        cell = self.cell
        needs = cell.judge.get("reference") == "baseline" or cell.fidelity.get("enabled")
        if not needs:
            return None
        with self.timed("baseline"):
            stage = self._reference_stage(cell.baseline, source_dir, store, renderer, stop_ids, strip, own)
            if stage is own:
                return {(r.prompt_id, r.repeat): r for r in self.record.results}
            own.close()  # one model in memory at a time; reloaded lazily if fidelity needs it
            results = stage.run(prompts, rendered, cell.sampler, cell.repeats)
            stage.close()
            return {(r.prompt_id, r.repeat): r for r in results}

    def _fidelity(self, source_dir: Path, store: Store, renderer: ChatRenderer, own: GenerationStage) -> None:
        from runner import fidelity_stage

        cell = self.cell
        chunks, sha = fidelity_stage.eval_chunks(cell.fidelity, renderer)
        reference = str(cell.fidelity.get("reference") or cell.baseline)
        ref_stage = self._reference_stage(reference, source_dir, store, renderer, [], True, own)
        if ref_stage is not own:
            own.close()  # one model in memory at a time
        entry = fidelity_stage.reference_entry(
            store, ref_stage.artifact, ref_stage.backend.runtime_key(ref_stage.format_cfg), chunks, sha,
            int(cell.fidelity["top_k"]), ref_stage.session)
        if ref_stage is not own:
            ref_stage.close()
        payload = {"reference": entry.key, "artifact": own.artifact.key,
                   "runtime": own.backend.runtime_key(own.format_cfg), "name": reference}
        result = store.lookup("fidelity", payload)
        if result is None:
            scored = fidelity_stage.score(own.session(), entry.path, int(entry.manifest["vocab"]), chunks, reference, sha)
            result = store.put_json("fidelity", payload, dataclasses.asdict(scored))
        self.record.fidelity = from_dict(FidelityResult, result.manifest["record"])


def run_cell(cell: Cell, job_dir: Path, progress: Progress | None = None) -> CellRecord:
    return CellRun(cell, job_dir, progress or Progress(quiet=True)).run()
