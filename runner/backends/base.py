"""The backend protocol (one per format) and the engine-independent generation loop.

Backends only turn token ids into next-token ids (`Session.stream`) and log-probs (`Session.logprobs`), and run
speed=bench's engine calls (`Session.bench_prefill` / `bench_decode`); stopping, the token cap, timing and the
bench's loop live here, so every format is measured and stopped the same way.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

import numpy as np

from runner.memory import peak_rss_mb
from runner.model_source import safetensors_header
from runner.records import ArtifactInfo, Generation, ModelSourceInfo, RuntimeInfo, SamplerParams
from runner.speed import BenchIds
from runner.store import Store

if TYPE_CHECKING:
    from runner.calibration import Calibration
    from runner.contract import RenderedPrompt


class Session(Protocol):
    def __enter__(self) -> "Session": ...
    def __exit__(self, *exc: Any) -> None: ...
    def stream(self, prompt_ids: list[int], sampler: SamplerParams) -> Iterator[int]:
        """Next-token ids after `prompt_ids` with `sampler`, until the caller stops consuming."""
    def logprobs(self, token_ids: list[int]) -> np.ndarray:
        """float32 [len(token_ids), vocab]: row i is the log-softmax predicting token i+1, fresh context."""

    prefill_batch: int  # tokens per prompt batch in `bench_prefill`

    def bench_prefill(self, token_ids: list[int]) -> Callable[[], int]:
        """speed=bench, llama-bench's pp test: an empty context now, and a call (timed by `bench`) that evaluates
        `token_ids` in batches of `prefill_batch`, no sampling, and returns the tokens then in the engine's context."""

    def bench_decode(self, token_ids: list[int]) -> Callable[[], int]:
        """speed=bench, llama-bench's tg test: an empty context now, and a call (timed by `bench`) that feeds
        `token_ids` one at a time, each token's logits computed and none sampled (so no EOS stops it), and returns
        the tokens then in the engine's context."""


class Backend(Protocol):
    name: str

    def prepare(self, source_dir: Path, source: ModelSourceInfo, precision: dict[str, Any],
                format_cfg: dict[str, Any], store: Store, method: dict[str, Any] | None = None,
                calibration: Calibration | None = None) -> ArtifactInfo:
        """Build or reuse the converted/quantized model in the store (`method`: how it is quantized; `calibration`:
        the text a calibrated method runs on)."""

    def load(self, artifact: ArtifactInfo, format_cfg: dict[str, Any]) -> Session:
        """A loaded model; use as a context manager so memory is freed on exit."""

    def runtime(self, format_cfg: dict[str, Any], artifact: ArtifactInfo) -> RuntimeInfo:
        """How `artifact` runs here, resolved: device, compute dtype and the settings that can change tokens."""

    def check_prompt_ids(self, artifact: ArtifactInfo, rendered: dict[str, RenderedPrompt]) -> None:
        """Raise one clear error unless the artifact's own tokenizer gives the rendered prompts' token ids."""


def generate(session: Session, prompt_ids: list[int], sampler: SamplerParams, stop_ids: list[int]) -> Generation:
    """The single generation loop: same stop rule, token cap and timing for every engine."""
    stop = set(stop_ids)
    tokens: list[int] = []
    finish = "length"
    t0 = time.perf_counter()
    t_first = t_last = t0
    stream = session.stream(prompt_ids, sampler)
    try:
        for tok in stream:
            t_last = time.perf_counter()
            if not tokens and t_first == t0:
                t_first = t_last
            if tok in stop:
                finish = "stop"
                break
            tokens.append(int(tok))
            if len(tokens) >= sampler.max_tokens:
                break
    finally:
        close = getattr(stream, "close", None)
        if close:
            close()
    wall = time.perf_counter() - t0
    ttft = t_first - t0
    n_after_first = len(tokens) - 1 + (finish == "stop")
    decode_s = t_last - t_first
    return Generation(  # a rate that cannot be measured is NaN (unknown), never 0
        text="", token_ids=tokens, prompt_tokens=len(prompt_ids), completion_tokens=len(tokens),
        finish_reason=finish, ttft_s=ttft, prompt_tps=len(prompt_ids) / ttft if ttft > 0 else math.nan,
        gen_tps=n_after_first / decode_s if decode_s > 0 and n_after_first > 0 else math.nan,
        wall_s=wall, peak_rss_mb=peak_rss_mb(),
    )


WARMUP_TOKENS = 4


def warm_up(session: Session, prompt_ids: list[int]) -> None:
    """One short untimed greedy generation right after a model loads, the same in every engine: page-in of
    mmapped weights (llama.cpp) and lazy start-up (MLX) would otherwise be charged to the first timed prompt."""
    greedy = SamplerParams(temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, repetition_penalty=1.0,
                           max_tokens=WARMUP_TOKENS, seed=0)
    generate(session, prompt_ids, greedy, stop_ids=[])


@dataclass
class BenchTimes:
    """The timed repetitions of one bench: seconds, and the tokens in the engine's context after each."""

    pp_s: list[float] = field(default_factory=list)
    pp_context: list[int] = field(default_factory=list)
    tg_s: list[float] = field(default_factory=list)
    tg_context: list[int] = field(default_factory=list)


def _timed(run: Callable[[], int]) -> tuple[float, int]:
    """One timed engine call, the garbage collector off while it runs (llama-bench's C++ loop has none)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        n = run()
        return time.perf_counter() - t0, n
    finally:
        if enabled:
            gc.enable()


def bench(session: Session, ids: BenchIds) -> BenchTimes:
    """llama-bench's loop (tools/llama-bench/llama-bench.cpp, `main`), the same for every engine: the pp test,
    a whole untimed pp run as warm-up, then one timed run per repetition from an empty context; then the tg test,
    one untimed token as warm-up, then one timed run per repetition from an empty context. Preparing a run
    (clearing the context, building batches) is not timed; llama-bench clears before `t_start` too."""
    out = BenchTimes()
    for test, prepare, warmup, reps, seconds, context in (
            ("pp", session.bench_prefill, ids.pp_warmup, ids.pp, out.pp_s, out.pp_context),
            ("tg", session.bench_decode, ids.tg_warmup, ids.tg, out.tg_s, out.tg_context)):
        prepare(warmup)()
        for rep in reps:
            took, n = _timed(prepare(rep))
            _check_processed(test, n, len(rep))
            seconds.append(took)
            context.append(n)
    return out


def _check_processed(test: str, processed: int, asked: int) -> None:
    if processed != asked:
        raise RuntimeError(f"speed=bench {test}: the engine holds {processed} tokens after the run, {asked} were fed")


def compare_prompt_ids(rendered: dict[str, RenderedPrompt], tokenize: Callable[[str], list[int]],
                       bos_id: int | None, artifact: str) -> None:
    """A prebuilt artifact must see every prompt as the sweep's model does (the generation contract)."""
    for prompt_id, r in rendered.items():
        ids = tokenize(r.text)
        if bos_id is not None and r.token_ids[:1] == [bos_id] and ids[:1] != [bos_id]:
            ids = [bos_id, *ids]  # plain completion: the model's tokenizer adds BOS, the text has none
        if ids != r.token_ids:
            at = next((i for i, (a, b) in enumerate(zip(ids, r.token_ids)) if a != b), min(len(ids), len(r.token_ids)))
            mine = ids[at] if at < len(ids) else "end"
            theirs = r.token_ids[at] if at < len(r.token_ids) else "end"
            raise ValueError(f"artifact.path {artifact} tokenizes prompt {prompt_id!r} differently from the sweep's "
                             f"model: token {at} is {mine} in the artifact, {theirs} in the model "
                             f"({len(ids)} vs {len(r.token_ids)} tokens); it was not made from this model")


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float32, copy=False)
    m = logits.max(axis=-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(axis=-1, keepdims=True))


def safetensors_data_bytes(path: Path) -> int:
    """Tensor bytes of a safetensors file (size minus header)."""
    header_len, _ = safetensors_header(path)
    return path.stat().st_size - 8 - header_len


def artifact_info(entry: Any, path: Path, source: ModelSourceInfo) -> ArtifactInfo:
    """Uniform bits/weight for every format: 8 × tensor bytes (from the build manifest) / source parameters."""
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    m = entry.manifest
    bpw = 8 * m["tensor_bytes"] / source.n_params if source.n_params else None
    return ArtifactInfo(key=entry.key, path=str(path), size_bytes=size, bits_per_weight=bpw,
                        build_s=float(m.get("build_s", 0.0)), cache_hit=entry.cache_hit,
                        tool_versions=m.get("tool_versions", {}), params=m["payload"].get("params", {}),
                        warnings=list(m.get("warnings", [])))
