"""The generation stage: cached, lazily-loaded generation of every prompt × repeat for one artifact."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any, Callable

from runner.backends import base
from runner.backends.base import Backend, Session
from runner.contract import RenderedPrompt, split_thinking
from runner.host import measured_on
from runner.memory import reset_peak_rss
from runner.prompts import Prompt
from runner.records import ArtifactInfo, Generation, PromptResult, RuntimeInfo, SamplerParams, from_dict

if TYPE_CHECKING:
    from runner.context import CellContext

log = logging.getLogger(__name__)

# Bump whenever sampling, stopping, timing or decoding code changes: cached answers made by older code are
# then regenerated instead of reused (a sampler fix must not reuse old sampled answers).
GENERATION_CODE_VERSION = 3
KIND = "generations"  # store kind


def runtime_key(runtime: RuntimeInfo) -> dict[str, Any]:
    """The part of a resolved runtime that can change tokens or log-probs: the engine and its versions, the
    device, the compute dtype and the engine settings but thread counts (they do not change outputs)."""
    return {"engine": runtime.engine, "device": runtime.device, "compute_dtype": runtime.compute_dtype,
            **runtime.output_settings()}


def generation_key(artifact: ArtifactInfo, runtime: RuntimeInfo, rendered: RenderedPrompt, sampler: SamplerParams,
                   stop_ids: list[int]) -> dict[str, Any]:
    """Everything one generation depends on: the cache key payload."""
    return {"code_version": GENERATION_CODE_VERSION, "artifact": artifact.key, "runtime": runtime_key(runtime),
            "prompt_ids_sha": rendered.ids_sha, "sampler": dataclasses.asdict(sampler), "stop_ids": list(stop_ids)}


class GenerationStage:
    """Generates with one loaded model, reusing cached generations; the model loads only on a cache miss."""

    def __init__(self, ctx: CellContext, backend: Backend, artifact: ArtifactInfo, format_cfg: dict[str, Any]):
        self.ctx, self.backend, self.artifact, self.format_cfg = ctx, backend, artifact, format_cfg
        self.runtime = backend.runtime(format_cfg, artifact)
        self.runtime.parallel_jobs = ctx.parallel_jobs
        self.measured_on = measured_on(ctx.host, self.runtime)
        self._session: Session | None = None

    def session(self) -> Session:
        """The loaded model, warmed up (also when it is loaded for fidelity only)."""
        if self._session is None:
            reset_peak_rss()
            self._session = self.backend.load(self.artifact, self.format_cfg).__enter__()
            base.warm_up(self._session, self.ctx.rendered[self.ctx.prompts[0].id].token_ids)
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.__exit__(None, None, None)
            self._session = None

    def __enter__(self) -> "GenerationStage":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def run_one(self, prompt: Prompt, sampler: SamplerParams, repeat: int) -> PromptResult:
        ctx = self.ctx
        rendered = ctx.rendered[prompt.id]
        payload = generation_key(self.artifact, self.runtime, rendered, sampler, ctx.stop_ids)
        hit = ctx.store.lookup(KIND, payload)
        if hit is not None:
            gen = from_dict(Generation, hit.manifest["record"])
        else:
            gen = base.generate(self.session(), rendered.token_ids, sampler, ctx.stop_ids)
            gen.text = ctx.renderer.decode(gen.token_ids)
            gen.measured_on, gen.parallel_jobs = self.measured_on, ctx.parallel_jobs
            hit = ctx.store.put_json(KIND, payload, dataclasses.asdict(gen))
        answer, thinking = split_thinking(gen.text) if ctx.strip_thinking else (gen.text, "")
        thinking_tokens = len(ctx.renderer.encode(thinking)) if thinking else 0
        return PromptResult(prompt_id=prompt.id, category=prompt.category, repeat=repeat, prompt_text=prompt.prompt,
                            reference=prompt.reference, rendered_prompt=rendered.text,
                            prompt_token_ids_sha=rendered.ids_sha, generation_key=hit.key, generation=gen,
                            answer=answer, thinking_tokens=thinking_tokens, cache_hit=hit.cache_hit)

    def run(self, on_done: Callable[[PromptResult], None] | None = None) -> list[PromptResult]:
        """Every prompt × repeat of the cell; repeat r uses seed + r."""
        results = []
        for repeat in range(self.ctx.cell.repeats):
            for p in self.ctx.prompts:
                results.append(self.run_one(p, self.ctx.cell.sampler(repeat), repeat))
                if on_done:
                    on_done(results[-1])
        return results
