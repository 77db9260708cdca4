"""Per-cell speed: aggregates over the answers measured on the cell's own host and device (`speed=answers`),
and the pure parts of `speed=bench` (llama-bench's protocol: config check, token ids, rate statistics)."""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np

from runner.records import Generation, PromptResult, SpeedBench, SpeedStats


def comparable(g: Generation, measured_on: str | None) -> bool:
    """Whether `g`'s speed was measured where the cell ran now (None: the record predates host tags)."""
    return measured_on is None or g.measured_on == measured_on


def decode_tokens_and_seconds(g: Generation) -> tuple[int, float]:
    """Tokens after the first and the time they took (TTFT covers the first): what gen tok/s divides."""
    tokens = max(g.completion_tokens - 1, 0)
    return (tokens, tokens / g.gen_tps) if g.gen_tps > 0 else (0, 0.0)  # NaN > 0 is False


def speed_stats(results: list[PromptResult], measured_on: str | None = None) -> SpeedStats | None:
    """Token-weighted throughput (total tokens / total time), plain means for per-prompt figures.

    Speed figures use only answers measured on `measured_on` (host fingerprint/device); the others are
    counted in `stale_answers`. Token counts and truncation use every answer.
    """
    gens = [r.generation for r in results]
    if not gens:
        return None
    n = len(gens)
    timed = [g for g in gens if comparable(g, measured_on)]
    prompt_s = sum(g.ttft_s for g in timed)
    decode = [decode_tokens_and_seconds(g) for g in timed]
    decode_tokens, decode_s = sum(t for t, _ in decode), sum(s for _, s in decode)
    peaks = [g.peak_rss_mb for g in timed if g.peak_rss_mb is not None]
    return SpeedStats(
        n=n,
        s_per_prompt=sum(g.wall_s for g in timed) / len(timed) if timed else math.nan,
        prompt_tps=sum(g.prompt_tokens for g in timed) / prompt_s if prompt_s > 0 else math.nan,
        gen_tps=decode_tokens / decode_s if decode_s > 0 else math.nan,
        ttft_s=prompt_s / len(timed) if timed else math.nan,
        mean_tokens=sum(g.completion_tokens for g in gens) / n,
        truncated_pct=100.0 * sum(g.finish_reason == "length" for g in gens) / n,
        peak_rss_mb=max(peaks) if peaks else None,
        stale_answers=n - len(timed),
        parallel_jobs=max((g.parallel_jobs for g in timed), default=1),
    )


# ---------------------------------------------------------------- speed=bench: llama-bench's protocol

SPEED_MODES = ("answers", "bench")
CV_WARN_PCT = 10.0  # the report warns loudly above this coefficient of variation (a busy or throttling machine)
BENCH_DEFAULTS = {"name": "answers", "pp": 512, "tg": 128, "r": 5, "seed": 0, "cache": True}


def check_speed_config(speed: dict[str, Any], format_cfg: dict[str, Any] | None = None) -> None:
    """What the `speed` group alone decides (and, for llama.cpp, whether pp and tg fit format.n_ctx)."""
    name = speed.get("name", "answers")
    if name not in SPEED_MODES:
        raise ValueError(f"speed={name!r}: one of {', '.join(SPEED_MODES)}")
    for key in ("pp", "tg", "r"):
        value = speed.get(key, BENCH_DEFAULTS[key])
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"speed.{key} must be an integer >= 1, got {value!r}")
    seed = speed.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"speed.seed must be an integer, got {seed!r}")
    if not isinstance(speed.get("cache", True), bool):
        raise ValueError(f"speed.cache must be true or false, got {speed.get('cache')!r}")
    n_ctx = (format_cfg or {}).get("n_ctx")
    if name == "bench" and isinstance(n_ctx, int):
        for key in ("pp", "tg"):
            if int(speed.get(key, BENCH_DEFAULTS[key])) > n_ctx:
                raise ValueError(f"speed.{key}={speed[key]} exceeds format.n_ctx={n_ctx} (each test runs in one "
                                 "context from empty): lower it or raise format.n_ctx")


@dataclass(frozen=True)
class BenchIds:
    """The token ids of one bench, the same for every engine: warm-ups and one sequence per repetition.

    As llama-bench's `test_prompt` / `test_gen`: uniform random ids in [0, vocab), the first one BOS where the
    model's tokenizer adds one. llama-bench draws from `std::rand()`; these come from a seeded generator, so
    both engines (and a re-run) evaluate exactly the same ids.
    """

    pp_warmup: list[int]
    pp: list[list[int]]  # one per repetition
    tg_warmup: list[int]  # one token, as llama-bench's `test_gen(ctx, 1, ...)`
    tg: list[list[int]]
    seed: int

    @property
    def sha(self) -> str:
        blob = json.dumps([self.pp_warmup, self.pp, self.tg_warmup, self.tg], separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def bench_token_ids(vocab: int, bos: int | None, pp: int, tg: int, r: int, seed: int) -> BenchIds:
    rng = np.random.default_rng([seed, 0x6C6C_6231])  # a stream of its own: no other seeded draw shares it

    def draw(n: int) -> list[int]:
        ids = rng.integers(0, vocab, size=n).tolist()
        if bos is not None:
            ids[0] = bos
        return [int(i) for i in ids]

    return BenchIds(pp_warmup=draw(pp), pp=[draw(pp) for _ in range(r)], tg_warmup=draw(1),
                    tg=[draw(tg) for _ in range(r)], seed=seed)


def rate_stats(tokens: int, seconds: list[float]) -> tuple[list[float], float, float, float]:
    """llama-bench's figures (`test::get_ts`, `avg`, `stdev`): per-repetition rates tokens / seconds, their mean,
    their sample standard deviation (n - 1; NaN for one repetition: unknown, not 0) and CV in % (100 × sd / mean)."""
    rates = [tokens / s if s > 0 else math.nan for s in seconds]
    if not rates:
        return [], math.nan, math.nan, math.nan
    mean = statistics.fmean(rates)
    sd = statistics.stdev(rates) if len(rates) > 1 else math.nan
    cv = 100.0 * sd / mean if mean > 0 else math.nan
    return rates, mean, sd, cv


def speed_bench(pp: int, tg: int, seed: int, pp_s: list[float], tg_s: list[float], pp_context: list[int],
                tg_context: list[int], **fields: Any) -> SpeedBench:
    """The record of one bench from its timed repetitions (`fields`: threads, batch, tags)."""
    pp_rates, pp_mean, pp_sd, pp_cv = rate_stats(pp, pp_s)
    tg_rates, tg_mean, tg_sd, tg_cv = rate_stats(tg, tg_s)
    return SpeedBench(pp=pp, tg=tg, r=len(pp_s), pp_tps=pp_mean, pp_sd=pp_sd, pp_cv=pp_cv, tg_tps=tg_mean,
                      tg_sd=tg_sd, tg_cv=tg_cv, pp_samples_s=list(pp_s), tg_samples_s=list(tg_s),
                      pp_samples_tps=pp_rates, tg_samples_tps=tg_rates, pp_context=list(pp_context),
                      tg_context=list(tg_context), seed=seed, **fields)
