"""The generation stage: cached, lazily-loaded generation of every prompt × repeat for one artifact."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

from runner.backends import base
from runner.backends.base import Backend, Session
from runner.contract import ChatRenderer, RenderedPrompt, split_thinking
from runner.memory import reset_peak_rss
from runner.prompts import Prompt
from runner.records import ArtifactInfo, Generation, PromptResult, SamplerParams, from_dict
from runner.store import Store

log = logging.getLogger(__name__)


class GenerationStage:
    """Generates with one loaded model, reusing cached generations; the model loads only on a cache miss."""

    def __init__(self, backend: Backend, artifact: ArtifactInfo, format_cfg: dict[str, Any], renderer: ChatRenderer,
                 stop_ids: list[int], store: Store, strip_thinking: bool = True):
        self.backend, self.artifact, self.format_cfg = backend, artifact, format_cfg
        self.renderer, self.stop_ids, self.store, self.strip_thinking = renderer, stop_ids, store, strip_thinking
        self._session: Session | None = None

    def session(self) -> Session:
        if self._session is None:
            reset_peak_rss()
            self._session = self.backend.load(self.artifact, self.format_cfg).__enter__()
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.__exit__(None, None, None)
            self._session = None

    def __enter__(self) -> "GenerationStage":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def key_payload(self, rendered: RenderedPrompt, sampler: SamplerParams) -> dict[str, Any]:
        return {"artifact": self.artifact.key, "runtime": self.backend.runtime_key(self.format_cfg),
                "prompt_ids_sha": rendered.ids_sha, "sampler": dataclasses.asdict(sampler), "stop_ids": self.stop_ids}

    def run_one(self, prompt: Prompt, rendered: RenderedPrompt, sampler: SamplerParams, repeat: int) -> PromptResult:
        payload = self.key_payload(rendered, sampler)
        hit = self.store.lookup("generations", payload)
        if hit is not None:
            gen = from_dict(Generation, hit.manifest["record"])
        else:
            gen = base.generate(self.session(), rendered.token_ids, sampler, self.stop_ids)
            gen.text = self.renderer.decode(gen.token_ids)
            hit = self.store.put_json("generations", payload, dataclasses.asdict(gen))
        answer, thinking = split_thinking(gen.text) if self.strip_thinking else (gen.text, "")
        thinking_tokens = len(self.renderer.tokenizer.encode(thinking, add_special_tokens=False)) if thinking else 0
        return PromptResult(prompt_id=prompt.id, category=prompt.category, repeat=repeat, prompt_text=prompt.prompt,
                            reference=prompt.reference, rendered_prompt=rendered.text,
                            prompt_token_ids_sha=rendered.ids_sha, generation_key=hit.key, generation=gen,
                            answer=answer, thinking_tokens=thinking_tokens, cache_hit=hit.cache_hit)

    def run(self, prompts: list[Prompt], rendered: dict[str, RenderedPrompt], sampler_for: Callable[[int], SamplerParams],
            repeats: int, on_done: Callable[[], None] | None = None) -> list[PromptResult]:
        results = []
        for repeat in range(repeats):
            for p in prompts:
                results.append(self.run_one(p, rendered[p.id], sampler_for(repeat), repeat))
                if on_done:
                    on_done()
        return results
