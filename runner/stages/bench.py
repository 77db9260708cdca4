"""speed=bench: llama-bench's protocol (pp prompt tokens, tg generated tokens, one warm-up, r repetitions) in the
cell's own loaded session, the same for both engines; the loop is `backends/base.bench`, the engine calls are the
sessions' `bench_prefill` / `bench_decode`, the statistics `runner/speed.py`.

Cached in the store (kind `speed-bench`) under a key that holds where it was measured: the host fingerprint,
device and threads (`host.measured_on`, as answers' speed is tagged), MLX's measured CPU threads, the cells the
launcher ran at once, the engine and artifact, the engine settings, the bench settings and its token ids. A cached
bench is thus reused only on the same hardware with the same threads and concurrency: never stale, never
another machine's number. A noisy bench (CV above 10 %, or r = 1) is not stored: a re-run measures again.
`speed.cache=false` measures every time and stores nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.backends import base
from runner.records import SpeedBench, from_dict
from runner.speed import BENCH_DEFAULTS, CV_WARN_PCT, BenchIds, bench_token_ids, speed_bench
from runner.stages.generate import runtime_key

if TYPE_CHECKING:
    from runner.context import CellContext
    from runner.contract import ChatRenderer
    from runner.stages.generate import GenerationStage

log = logging.getLogger(__name__)

BENCH_CODE_VERSION = 1  # bump when what pp / tg time, or the record's format, changes
KIND = "speed-bench"  # store kind


def settings(cfg: dict[str, Any]) -> dict[str, int]:
    """The bench settings of the `speed` group, defaults filled in."""
    return {k: int(cfg.get(k, BENCH_DEFAULTS[k])) for k in ("pp", "tg", "r", "seed")}


def vocab_size(renderer: ChatRenderer, source_dir: Path) -> int:
    """Ids every engine of the model accepts: the tokenizer's ids, and no more than the model's embedding rows."""
    n = len(renderer.tokenizer)
    config = Path(source_dir) / "config.json"
    if config.is_file():
        data = json.loads(config.read_text())
        rows = data.get("vocab_size") or (data.get("text_config") or {}).get("vocab_size")
        if isinstance(rows, int) and rows > 0:
            n = min(n, rows)
    return n


def bench_ids(renderer: ChatRenderer, source_dir: Path, cfg: dict[str, Any]) -> BenchIds:
    """The bench's token ids: a function of the model's tokenizer and the settings only, so every engine (and
    benchmarks/bench_speed_protocol.py) gets the same ones."""
    s = settings(cfg)
    return bench_token_ids(vocab_size(renderer, source_dir), renderer.bos_id(), s["pp"], s["tg"], s["r"], s["seed"])


def bench_key(stage: GenerationStage, ids: BenchIds, cfg: dict[str, Any]) -> dict[str, Any]:
    """Everything a bench's numbers depend on, where it ran included (so a hit is never another host's speed)."""
    rt = stage.runtime
    return {"code_version": BENCH_CODE_VERSION, "artifact": stage.artifact.key, "runtime": runtime_key(rt),
            "measured_on": stage.measured_on, "cpu_threads": rt.cpu_threads, "parallel_jobs": rt.parallel_jobs,
            "settings": settings(cfg), "ids_sha": ids.sha}


def threads(stage: GenerationStage) -> tuple[int | None, int | None]:
    """(prompt batches, one-token steps): llama.cpp's resolved n_threads_batch / n_threads; MLX's measured ones."""
    rt = stage.runtime
    if "n_threads" in rt.settings:
        return rt.settings.get("n_threads_batch"), rt.settings.get("n_threads")
    return rt.cpu_threads, rt.cpu_threads


def run_bench(ctx: CellContext, stage: GenerationStage, cfg: dict[str, Any]) -> SpeedBench:
    """The cell's bench: from the store when measured here before with the same threads and concurrency, else
    measured now in the stage's session (loaded and warmed up if the answers were all cached)."""
    ids = bench_ids(ctx.renderer, ctx.source_dir, cfg)
    payload = bench_key(stage, ids, cfg)
    cache = bool(cfg.get("cache", True))
    if cache and (hit := ctx.store.lookup(KIND, payload)) is not None:
        return dataclasses.replace(from_dict(SpeedBench, hit.manifest["record"]), cache_hit=True, key=hit.key)
    session = stage.session()
    times = base.bench(session, ids)
    threads_pp, threads_tg = threads(stage)
    s = settings(cfg)
    result = speed_bench(s["pp"], s["tg"], s["seed"], times.pp_s, times.tg_s, times.pp_context, times.tg_context,
                         pp_batch=int(session.prefill_batch), threads_pp=threads_pp, threads_tg=threads_tg,
                         ids_sha=ids.sha, measured_on=stage.measured_on, parallel_jobs=ctx.parallel_jobs)
    log.info("bench pp%d %.1f ± %.1f tok/s (CV %.1f %%), tg%d %.1f ± %.1f tok/s (CV %.1f %%), r=%d",
             result.pp, result.pp_tps, result.pp_sd, result.pp_cv, result.tg, result.tg_tps, result.tg_sd,
             result.tg_cv, result.r)
    if cache and not noisy(result):
        entry = ctx.store.put_json(KIND, payload, dataclasses.asdict(result))
        result.key = entry.key
    return result


def noisy(b: SpeedBench) -> bool:
    """A CV above CV_WARN_PCT (or unknown: r = 1): the report warns, and it is not cached (a re-run re-measures)."""
    return not (b.pp_cv <= CV_WARN_PCT and b.tg_cv <= CV_WARN_PCT)  # NaN compares False
