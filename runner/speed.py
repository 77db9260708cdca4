"""Per-cell speed aggregates over prompt results."""

from __future__ import annotations

from runner.records import Generation, PromptResult, SpeedStats


def decode_tokens_and_seconds(g: Generation) -> tuple[int, float]:
    """Tokens after the first and the time they took (TTFT covers the first): what gen tok/s divides."""
    tokens = max(g.completion_tokens - 1, 0)
    return tokens, tokens / g.gen_tps if g.gen_tps > 0 else 0.0


def speed_stats(results: list[PromptResult]) -> SpeedStats | None:
    """Token-weighted throughput (total tokens / total time), plain means for per-prompt figures."""
    gens = [r.generation for r in results]
    if not gens:
        return None
    n = len(gens)
    prompt_s = sum(g.ttft_s for g in gens)
    decode = [decode_tokens_and_seconds(g) for g in gens]
    decode_tokens, decode_s = sum(t for t, _ in decode), sum(s for _, s in decode)
    peaks = [g.peak_memory_mb for g in gens if g.peak_memory_mb is not None]
    return SpeedStats(
        n=n,
        s_per_prompt=sum(g.wall_s for g in gens) / n,
        prompt_tps=sum(g.prompt_tokens for g in gens) / prompt_s if prompt_s > 0 else 0.0,
        gen_tps=decode_tokens / decode_s if decode_s > 0 else 0.0,
        ttft_s=prompt_s / n,
        mean_completion_tokens=sum(g.completion_tokens for g in gens) / n,
        truncated_pct=100.0 * sum(g.finish_reason == "length" for g in gens) / n,
        peak_rss_mb=max(peaks) if peaks else None,
    )
