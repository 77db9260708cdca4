"""Statistics columns on synthetic records: prompt-level CIs, paired deltas vs the baseline cell, judge noise."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from runner.identity import find_baseline
from runner.records import (ArtifactInfo, CellIdentity, CellRecord, FidelityResult, Generation, GenerationContract,
                            HostInfo, Judgment, PromptResult, RuntimeInfo, SamplerParams)
from runner.speed import speed_stats
from runner.analysis.findings import parallel_cells
from runner.analysis.matrix_stats import judge_noise, stat_columns

CATEGORIES = ("code", "factual")


def answer(pid: str, repeat: int, overall: float | None, *, gen_tps: float = 100.0, wall_s: float = 0.1,
           text: str | None = None, key: str = "", tokens: int = 8, agreement: float = 1.0) -> PromptResult:
    """One prompt result; `overall` None = not judged."""
    gen = Generation(text=text or f"answer {pid}", token_ids=list(range(tokens)), prompt_tokens=20,
                     completion_tokens=tokens, finish_reason="length", ttft_s=0.01, prompt_tps=2000.0,
                     gen_tps=gen_tps, wall_s=wall_s)
    judgments = [] if overall is None else [Judgment(
        "judge-model", "v1", scores={c: int(overall) for c in ("overall", "accuracy", "coherence", "relevance")},
        key=key or f"{pid}-{repeat}-{overall}-{gen_tps}")]
    return PromptResult(prompt_id=pid, category=CATEGORIES[int(pid[1:]) % 2], repeat=repeat,
                        prompt_text=f"prompt {pid}", reference=None, rendered_prompt=f"<user>prompt {pid}",
                        prompt_token_ids_sha=f"sha-{pid}", generation_key=f"gen-{pid}-{repeat}", generation=gen,
                        answer=gen.text, judgments=judgments,
                        agreement={"exact": agreement, "token_similarity": agreement, "prefix_match": agreement})


def cell_record(fmt: str, precision: str, results: list[PromptResult], *, job: int = 0, status: str = "ok",
                reason: str | None = None, kld: float | None = None, top1: float = 100.0, size_gb: float = 1.0,
                generation: str = "default", max_tokens: int = 8) -> CellRecord:
    """A cell record as the pipeline writes it (contract, artifact, speed, fidelity vs gguf_fp16)."""
    ident = CellIdentity(model="tiny", format=fmt, precision=precision, generation=generation, prompts="seed",
                         judge="openai", overrides=[f"format={fmt}", f"precision={precision}"], job_num=job)
    if status != "ok":
        return CellRecord(cell=ident, status=status, reason=reason)
    fidelity = None if kld is None else FidelityResult(
        baseline="gguf_fp16", n_tokens=1000, kld_mean=kld, kld_se=kld / 10, kld_median=kld, kld_p99=3 * kld,
        kld_max=5 * kld, top1_pct=top1, ppl=10.0 + kld, baseline_ppl=10.0, dppl=kld, rms_dp=kld, n_chunks=4)
    return CellRecord(
        cell=ident, status="ok",
        artifact=ArtifactInfo(key=f"{fmt}-{precision}", path="/x", size_bytes=int(size_gb * 1e9),
                              bits_per_weight=16 * size_gb, build_s=1.0, cache_hit=False),
        contract=GenerationContract(SamplerParams(0.0, 1.0, 0, 0.0, 1.0, max_tokens, 0), "template-sha", False, [4],
                                    "/tok", True),
        results=results, speed=speed_stats(results), fidelity=fidelity)


def noisy_cell(fmt: str, precision: str, prompts: int, repeats: int, shift: float = 0.0, seed: int = 0,
               job: int = 0) -> CellRecord:
    rng = np.random.default_rng(seed)
    results = [answer(f"p{p}", r, float(np.clip(round(5 + shift + rng.normal(0, 2)), 0, 10)),
                      gen_tps=float(rng.uniform(80, 120)), wall_s=float(rng.uniform(0.05, 0.15)))
               for p in range(prompts) for r in range(repeats)]
    return cell_record(fmt, precision, results, job=job)


def test_ci_contains_the_mean_and_shrinks_with_more_repeats():
    widths = []
    for k in (2, 8, 32):
        rec = noisy_cell("gguf", "q4_0", prompts=5, repeats=k)
        (cols,) = stat_columns([rec], baseline=None)
        overall = np.mean([r.judgments[0].scores["overall"] for r in rec.results])
        assert cols["overall_lo"] <= overall <= cols["overall_hi"]
        assert cols["gen_tps_lo"] <= rec.speed.gen_tps <= cols["gen_tps_hi"]  # the matrix's token-weighted rate
        assert cols["s_per_prompt_lo"] <= rec.speed.s_per_prompt <= cols["s_per_prompt_hi"]
        assert cols["answer_agreement_lo"] == cols["answer_agreement_hi"] == 1.0
        widths.append(cols["overall_hi"] - cols["overall_lo"])
    assert widths[0] > widths[1] > widths[2] > 0


def test_paired_deltas_vs_the_baseline_cell():
    base = noisy_cell("gguf", "fp16", prompts=10, repeats=3, seed=1, job=0)
    better = noisy_cell("gguf", "q8_0", prompts=10, repeats=3, seed=1, shift=3, job=1)  # same noise, +3 overall
    same = noisy_cell("mlx", "fp16", prompts=10, repeats=3, seed=1, job=2)
    other_gen = cell_record("gguf", "q4_0", base.results, generation="sampled", job=3)
    other_gen.cell.overrides.append("generation=sampled")
    records = [base, better, same, other_gen]
    cols = stat_columns(records, baseline="gguf_fp16")
    assert "d_overall" not in cols[0]  # the baseline itself
    assert cols[1]["d_overall_sig"] is True and 2 < cols[1]["d_overall"] <= 3 and cols[1]["d_overall_n"] == 10
    assert cols[1]["d_overall_p"] <= 2 / 2 ** 10 + 1e-12
    per_prompt = [np.mean([b.judgments[0].scores["overall"] - a.judgments[0].scores["overall"]
                           for a, b in zip(base.results, better.results) if a.prompt_id == pid])
                  for pid in {r.prompt_id for r in base.results}]
    if np.std(per_prompt) == 0:  # every prompt moved by the same amount: no spread to estimate a limit from
        assert math.isnan(cols[1]["d_overall_mdd"])
    else:
        assert 0 < cols[1]["d_overall_mdd"] < 3
    assert cols[1]["d_overall_lo"] <= cols[1]["d_overall"] <= cols[1]["d_overall_hi"]
    assert cols[2]["d_overall"] == 0 and cols[2]["d_overall_sig"] is False
    assert cols[2]["d_gen_tps"] == 0 and cols[2]["d_gen_tps_sig"] is False
    assert "d_overall" not in cols[3]  # no baseline cell with its generation config in the sweep
    assert find_baseline(other_gen, records, "gguf_fp16") is None


def test_no_interval_and_no_verdict_below_five_prompts():
    base = noisy_cell("gguf", "fp16", prompts=4, repeats=4, seed=1, job=0)
    better = noisy_cell("gguf", "q8_0", prompts=4, repeats=4, seed=1, shift=4, job=1)
    (_, cols) = stat_columns([base, better], baseline="gguf_fp16")
    assert cols["d_overall"] > 3 and math.isnan(cols["d_overall_p"]) and math.isnan(cols["d_overall_lo"])
    assert cols["d_overall_sig"] is None and cols["d_overall_mdd"] == math.inf
    assert cols["d_overall_verdict"] == "inconclusive" and "an interval needs 5" in cols["d_overall_verdict_reason"]
    two = noisy_cell("gguf", "q4_0", prompts=2, repeats=20, job=2)
    (cols,) = stat_columns([two], baseline=None)
    assert cols["n_prompts"] == 2 and math.isnan(cols["overall_lo"]) and math.isnan(cols["gen_tps_lo"])
    assert cols["overall_code_n"] == 1 and math.isnan(cols["overall_code_lo"])


def test_one_statement_per_delta_whatever_else_the_sweep_holds():
    """The ≈ / significant flag is the interval's own (it excludes 0 or not): it does not change with the number of
    cells tested alongside, and no correction across them can turn a loss into a keep."""
    def build(precision: str, job: int, overall: int) -> CellRecord:
        results = [answer(f"p{i}", 0, 5 + (i % 3)) for i in range(8)]
        for i, r in enumerate(results):
            r.judgments[0].scores["overall"] = overall + (i % 2)  # only `overall` moves
        return cell_record("gguf", precision, results, job=job)

    base = build("fp16", 0, 5)
    cells = [build(f"q{k}", k, 4) for k in range(1, 9)]
    alone = stat_columns([base, cells[0]], baseline="gguf_fp16")[1]
    together = stat_columns([base, *cells], baseline="gguf_fp16")[1]
    for col in ("d_overall", "d_overall_lo", "d_overall_hi", "d_overall_p", "d_overall_sig", "d_overall_verdict"):
        assert alone[col] == together[col], col
    assert alone["d_overall_sig"] is True and alone["d_overall_hi"] < 0 and alone["d_overall_p"] <= 0.05
    assert alone["d_overall_verdict"] == "worse"  # −1 everywhere: below the 0.5 margin


def test_speed_measured_elsewhere_is_stale_not_mixed_in():
    host = HostInfo("fp-here", "cpu", 2, None, "Linux-x86_64", "h")
    here = [answer(f"p{i}", 0, 5, gen_tps=100.0) for i in range(5)]
    there = [answer(f"p{i}", 0, 5, gen_tps=900.0) for i in range(5, 9)]
    for r in here:
        r.generation.measured_on = "fp-here/cpu"
    for r in there:
        r.generation.measured_on = "fp-other/metal"
    rec = cell_record("gguf", "q4_0", here + there)
    rec.host, rec.runtime = host, RuntimeInfo("cpu", "float32")
    rec.speed = speed_stats(rec.results, "fp-here/cpu")
    assert rec.speed.stale_answers == 4 and rec.speed.gen_tps == pytest.approx(100.0)
    (cols,) = stat_columns([rec], baseline=None)
    assert cols["gen_tps_hi"] == pytest.approx(100.0)  # the CI covers only answers measured here


def test_cells_that_overlapped_on_one_machine_are_found():
    host = HostInfo("fp", "cpu", 2, None, "Linux-x86_64", "h")
    a, b, c = (cell_record("gguf", p, [answer("p0", 0, 5)], job=j) for j, p in enumerate(("fp16", "q8_0", "q4_0")))
    for rec, (start, end) in zip((a, b, c), ((0, 10), (5, 15), (20, 30))):
        rec.host = host
        rec.windows = {"cell": [start, end], "generate": [start + 1, end - 1]}
    assert parallel_cells([a, b, c]) == [a, b]
    c.windows = {"cell": [0, 30], "generate": [1, 29]}
    c.host = dataclasses.replace(host, hostname="other-node")  # same hardware, another machine: no contention
    assert parallel_cells([a, c]) == []


def test_unjudged_cells_have_nan_judge_statistics():
    rec = cell_record("gguf", "fp16", [answer(f"p{i}", 0, None) for i in range(4)], kld=0.02)
    (cols,) = stat_columns([rec, cell_record("gguf", "q4_0", rec.results, job=1)], baseline="gguf_fp16")[:1]
    assert math.isnan(cols["overall_lo"]) and math.isnan(cols["overall_code_lo"])
    assert cols["kld_mean_lo"] < 0.02 < cols["kld_mean_hi"]  # mean ± 1.96 SE


def test_judge_noise_from_identical_answers_judged_twice():
    a = cell_record("gguf", "fp16", [answer("p0", 0, 6, text="same", key="k1"), answer("p1", 0, 5, text="x", key="k2")])
    b = cell_record("mlx", "fp16", [answer("p0", 0, 8, text="same", key="k3"), answer("p1", 0, 5, text="y", key="k4")])
    noise = judge_noise([a, b])
    assert (noise.groups, noise.judgments, noise.mean_abs_diff, noise.max_abs_diff) == (1, 2, 2.0, 2.0)
    assert judge_noise([a]) is None  # nothing was judged twice
