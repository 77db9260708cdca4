"""Per-cell speed aggregates over prompt results, from the answers measured on the cell's own host and device."""

from __future__ import annotations

import math

from runner.records import Generation, PromptResult, SpeedStats


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
