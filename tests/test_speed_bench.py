"""speed=bench: llama-bench's protocol in both engines (real sessions on the tiny model), its record, matrix
columns and report; speed=answers unchanged. No timing is asserted: only what was run and counted."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from types import SimpleNamespace

import pytest

from conftest import run_runner, sweep_dirs
from runner.analysis import findings
from runner.analysis.matrix import build_matrix
from runner.analysis.report import write_report
from runner.backends import base, get_backend
from runner.cell import load_option as group
from runner.context import CellContext
from runner.contract import ChatRenderer
from runner.host import host_info
from runner.model_source import resolve_model
from runner.prompts import load_prompts
from runner.records import SamplerParams, SpeedBench, read_cell_record
from runner.speed import BenchIds, check_speed_config, rate_stats, speed_bench
from runner.stages import bench as bench_stage
from runner.stages.generate import GenerationStage
from runner.store import Store
from test_summary import answer, cell_record  # the synthetic record builder (tests/ is on sys.path)

GREEDY = SamplerParams(temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, repetition_penalty=1.0, max_tokens=8, seed=0)
SMALL = {"name": "bench", "pp": 48, "tg": 12, "r": 3, "seed": 0, "cache": False}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("store"))
    model_dir, source = resolve_model(group("model", "tiny"), store)
    renderer = ChatRenderer(model_dir, enable_thinking=False)
    prompts = load_prompts(group("prompts", "seed"))[:1]
    arts = {fmt: get_backend(fmt).prepare(model_dir, source, group("precision", "fp16"), group("format", fmt), store)
            for fmt in ("gguf", "mlx")}
    return SimpleNamespace(store=store, model_dir=model_dir, source=source, renderer=renderer, prompts=prompts,
                           arts=arts)


class CountingModel:
    """An mlx_lm model that counts the token positions it is called on."""

    def __init__(self, model):
        self.model, self.tokens = model, 0

    def __call__(self, inputs, *args, **kwargs):
        self.tokens += int(inputs.shape[1])
        return self.model(inputs, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


class Spy:
    """The real session, every bench call recorded: the ids fed, the count the session returned, and the engine's
    own count (llama.cpp's perf counters: batched prompt tokens or one-token decodes; MLX: positions the model was
    called on)."""

    def __init__(self, session, fmt: str):
        self.session, self.fmt = session, fmt
        self.calls: list[tuple[str, list[int], int, int]] = []  # (test, ids, returned count, engine's own count)
        if fmt == "mlx":
            session.model = CountingModel(session.model)

    def __getattr__(self, name):
        return getattr(self.session, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.session.__exit__(*exc)

    def _wrap(self, test: str, ids: list[int], run):
        import llama_cpp as lib

        def spied() -> int:
            if self.fmt == "gguf":
                lib.llama_perf_context_reset(self.session.llm._ctx.ctx)
            else:
                self.session.model.tokens = 0
            n = run()
            if self.fmt == "gguf":
                perf = lib.llama_perf_context(self.session.llm._ctx.ctx)
                counted = perf.n_p_eval if test == "pp" and len(ids) > 1 else perf.n_eval
            else:
                counted = self.session.model.tokens
            self.calls.append((test, list(ids), n, counted))
            return n
        return spied

    def bench_prefill(self, ids):
        return self._wrap("pp", ids, self.session.bench_prefill(ids))

    def bench_decode(self, ids):
        return self._wrap("tg", ids, self.session.bench_decode(ids))


def stage_for(env, fmt: str, tmp_path, spies: dict):
    backend = get_backend(fmt)
    load = backend.load

    def spied_load(artifact, cfg):
        spies[fmt] = Spy(load(artifact, cfg), fmt)
        return spies[fmt]

    backend.load = spied_load
    rendered = {p.id: env.renderer.render(p.prompt) for p in env.prompts}
    cell = SimpleNamespace(repeats=1, sampler=lambda repeat: GREEDY)
    ctx = CellContext(cell=cell, store=Store(tmp_path / "store"), source_dir=env.model_dir, source=env.source,
                      renderer=env.renderer, stop_ids=env.renderer.stop_token_ids(), strip_thinking=True,
                      prompts=env.prompts, rendered=rendered, host=host_info(), parallel_jobs=1)
    return ctx, GenerationStage(ctx, backend, env.arts[fmt], group("format", fmt)), lambda: setattr(backend, "load", load)


@pytest.fixture(scope="module")
def benched(env, tmp_path_factory):
    """Both engines benched on the same cell context: {fmt: (SpeedBench, Spy)}."""
    out, spies = {}, {}
    for fmt in ("gguf", "mlx"):
        ctx, stage, restore = stage_for(env, fmt, tmp_path_factory.mktemp(fmt), spies)
        try:
            with stage:
                out[fmt] = (bench_stage.run_bench(ctx, stage, SMALL), spies[fmt])
        finally:
            restore()
    return out


@pytest.mark.parametrize("fmt", ["gguf", "mlx"])
def test_r_timed_samples_of_the_requested_token_counts(benched, env, fmt):
    b, spy = benched[fmt]
    assert (b.pp, b.tg, b.r) == (48, 12, 3)
    for samples in (b.pp_samples_s, b.tg_samples_s, b.pp_samples_tps, b.tg_samples_tps):
        assert len(samples) == 3 and all(x > 0 for x in samples)
    assert b.pp_context == [48] * 3 and b.tg_context == [12] * 3  # what the engine holds after each run
    assert b.pp_samples_tps == pytest.approx([48 / s for s in b.pp_samples_s])
    assert b.tg_samples_tps == pytest.approx([12 / s for s in b.tg_samples_s])
    assert b.pp_tps == pytest.approx(statistics.fmean(b.pp_samples_tps))  # mean of per-repetition rates
    assert b.tg_sd == pytest.approx(statistics.stdev(b.tg_samples_tps))
    assert b.pp_cv == pytest.approx(100 * b.pp_sd / b.pp_tps)
    # the warm-ups ran first and are not among the samples: pp a whole run, tg one token
    tests = [(t, len(ids)) for t, ids, _, _ in spy.calls]
    assert tests == [("pp", 48)] * 4 + [("tg", 1)] + [("tg", 12)] * 3
    assert all(n == len(ids) for _, ids, n, _ in spy.calls)  # the context the session reported
    assert all(counted == len(ids) for _, ids, _, counted in spy.calls)  # the engine's own count of what it ran
    if fmt == "gguf":
        settings = get_backend("gguf").runtime(group("format", "gguf"), env.arts["gguf"]).settings
        assert (b.threads_pp, b.threads_tg) == (settings["n_threads_batch"], settings["n_threads"])  # the cell's
        assert b.pp_batch == 512
    else:
        assert b.pp_batch == 2048


def test_both_engines_get_the_same_ids(benched, env):
    (g, g_spy), (m, m_spy) = benched["gguf"], benched["mlx"]
    assert g.ids_sha == m.ids_sha
    assert [ids for _, ids, _, _ in g_spy.calls] == [ids for _, ids, _, _ in m_spy.calls]
    ids = bench_stage.bench_ids(env.renderer, env.model_dir, SMALL)
    assert [ids for _, ids, _, _ in g_spy.calls] == [ids.pp_warmup, *ids.pp, ids.tg_warmup, *ids.tg]
    assert len({tuple(x) for x in ids.pp}) == 3  # fresh random ids per repetition, as llama-bench draws them
    vocab = len(env.renderer.tokenizer)
    assert all(0 <= t < vocab for seq in ids.pp + ids.tg for t in seq)


@pytest.mark.parametrize("fmt", ["gguf", "mlx"])
def test_eos_never_stops_tg(env, fmt):
    """tg feeds ids regardless of what the model predicts: a run of nothing but EOS ids still counts tg tokens."""
    eos = env.renderer.stop_token_ids()[0]
    ids = BenchIds(pp_warmup=[eos] * 8, pp=[[eos] * 8] * 2, tg_warmup=[eos], tg=[[eos] * 20] * 2, seed=0)
    with get_backend(fmt).load(env.arts[fmt], group("format", fmt)) as session:
        times = base.bench(session, ids)
        again = base.generate(session, env.renderer.render("Hi").token_ids, GREEDY, [])  # the session still generates
    assert times.tg_context == [20, 20] and times.pp_context == [8, 8]
    assert again.completion_tokens == GREEDY.max_tokens


def test_an_engine_that_processes_fewer_tokens_fails_loudly():
    class Short:
        prefill_batch = 512

        def bench_prefill(self, ids):
            return lambda: len(ids)

        def bench_decode(self, ids):
            return lambda: max(len(ids) - 1, 1)  # as if it stopped at an EOS

    ids = BenchIds([1, 2], [[1, 2]], [3], [[3, 4, 5]], 0)
    with pytest.raises(RuntimeError, match="tg: the engine holds 2 tokens after the run, 3 were fed"):
        base.bench(Short(), ids)


def test_rates_are_llama_benchs(tmp_path):
    """Per-repetition tok/s, their mean and sample stddev (llama-bench's `stdev`), CV in %."""
    seconds = [0.5, 0.4, 0.8, 0.45]
    rates, mean, sd, cv = rate_stats(512, seconds)
    assert rates == pytest.approx([512 / s for s in seconds])
    n = len(rates)
    llama_bench_sd = math.sqrt(sum(x * x for x in rates) / (n - 1) - mean * mean * n / (n - 1))
    assert mean == pytest.approx(sum(rates) / n) and sd == pytest.approx(llama_bench_sd)
    assert cv == pytest.approx(100 * sd / mean)
    _, _, sd1, cv1 = rate_stats(512, [0.5])
    assert math.isnan(sd1) and math.isnan(cv1)  # one repetition: no spread (unknown, not 0)


def test_config_is_checked_before_any_work():
    check_speed_config({"name": "bench", "pp": 512, "tg": 128, "r": 5}, group("format", "gguf"))
    with pytest.raises(ValueError, match="speed.r must be an integer >= 1"):
        check_speed_config({"name": "bench", "r": 0})
    with pytest.raises(ValueError, match="speed='fast'"):
        check_speed_config({"name": "fast"})
    with pytest.raises(ValueError, match="speed.pp=8192 exceeds format.n_ctx=4096"):
        check_speed_config({"name": "bench", "pp": 8192}, group("format", "gguf"))


def test_cached_only_on_the_same_host_threads_and_concurrency(env, tmp_path, monkeypatch):
    monkeypatch.setattr(bench_stage, "noisy", lambda b: False)  # a busy test machine must not decide this test
    spies: dict = {}
    ctx, stage, restore = stage_for(env, "gguf", tmp_path, spies)
    cfg = {**SMALL, "r": 2, "cache": True}
    try:
        with stage:
            first = bench_stage.run_bench(ctx, stage, cfg)
            again = bench_stage.run_bench(ctx, stage, cfg)
            assert not first.cache_hit and again.cache_hit and again.key == first.key
            assert again.pp_samples_s == first.pp_samples_s
            stage.measured_on += "-other-host"  # another fingerprint / device / threads: measured again
            elsewhere = bench_stage.run_bench(ctx, stage, cfg)
            assert not elsewhere.cache_hit and elsewhere.key != first.key
            monkeypatch.setattr(bench_stage, "noisy", lambda b: True)  # a noisy bench is never stored
            stage.measured_on += "-noisy"
            unstored = bench_stage.run_bench(ctx, stage, cfg)
            assert unstored.key == "" and not bench_stage.run_bench(ctx, stage, cfg).cache_hit
    finally:
        restore()


def test_noisy_means_a_cv_above_ten_percent_or_unknown():
    assert not bench_stage.noisy(bench_record(2.0, 10.0))
    assert bench_stage.noisy(bench_record(2.0, 10.5)) and bench_stage.noisy(bench_record(11.0, 1.0))
    assert bench_stage.noisy(bench_record(math.nan, math.nan))  # r = 1: no spread to judge by


def bench_record(pp_cv: float, tg_cv: float, **fields) -> SpeedBench:
    rates = [100.0, 100.0]
    return dataclasses.replace(speed_bench(512, 128, 0, [5.12, 5.12], [1.28, 1.28], [512] * 2, [128] * 2,
                                           threads_pp=2, threads_tg=1),
                               pp_tps=1000.0, pp_sd=10 * pp_cv, pp_cv=pp_cv, tg_tps=100.0, tg_sd=tg_cv,
                               tg_cv=tg_cv, tg_samples_tps=rates, **fields)


def test_matrix_columns_and_report_with_a_loud_cv_warning(tmp_path):
    steady = cell_record("gguf", "fp16", [answer("p0", 0, None)], job=0)
    steady.bench = bench_record(2.0, 3.0)
    noisy = cell_record("gguf", "q4_0", [answer("p0", 0, None)], job=1)
    noisy.bench = bench_record(4.0, 14.5)
    plain = cell_record("mlx", "fp16", [answer("p0", 0, None)], job=2)  # speed=answers: no bench
    df = build_matrix([steady, noisy, plain], baseline="gguf_fp16").set_index("precision", drop=False)
    cols = ["bench_pp_tps", "bench_pp_sd", "bench_pp_cv", "bench_tg_tps", "bench_tg_sd", "bench_tg_cv",
            "bench_pp", "bench_tg", "bench_r", "bench_threads_pp", "bench_threads_tg"]
    assert set(cols) <= set(df.columns)
    row = df[df["format"] == "gguf"].loc["q4_0"]
    assert (row.bench_pp_tps, row.bench_tg_cv, row.bench_pp, row.bench_tg, row.bench_r) == (1000.0, 14.5, 512, 128, 2)
    assert df[df["format"] == "mlx"][["bench_pp_tps", "bench_tg_tps"]].isna().all(axis=None)
    write_report(df.reset_index(drop=True), findings.find([steady, noisy, plain]), tmp_path, baseline="gguf_fp16")
    md = (tmp_path / "report.md").read_text()
    speed = md.split("## Speed\n")[1].split("\n## ")[0]
    assert "Bench pp tok/s" in speed and "Bench tg tok/s" in speed
    assert "1,000 ± 20 (CV 2.0 %)" in speed and "100 ± 14.5 (CV 14.5 % ⚠️)" in speed
    assert "pp512 tg128 ×2, threads 2/1" in speed
    warning = [line for line in speed.splitlines() if "NOISY SPEED" in line]
    assert len(warning) == 1 and "gguf q4_0 (tg 14.5 %)" in warning[0] and "gguf fp16" not in warning[0]
    # no bench in the sweep: the Speed section as before
    (tmp_path / "plain").mkdir()
    write_report(build_matrix([plain], baseline="gguf_fp16"), findings.find([plain]), tmp_path / "plain",
                 baseline="gguf_fp16")
    assert "Bench" not in (tmp_path / "plain" / "report.md").read_text().split("## Speed\n")[1].split("\n## ")[0]


def test_speed_answers_is_unchanged_and_bench_runs_in_the_pipeline(tmp_path):
    """One sweep, the default speed=answers and speed=bench: the answers' speed as before in both, the bench only
    in the bench cell; records without `bench` (older ones) still read."""
    proc = run_runner(["-m", "speed=answers,bench", "format=gguf,mlx", "fidelity=off", "generation.max_tokens=8",
                       "speed.pp=32", "speed.tg=8", "speed.r=2", "quiet=true"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = sweep_dirs(tmp_path)
    records = [read_cell_record(p) for p in sorted(sweep.glob("*/result.json"))]
    by = {(r.cell.format, "speed=bench" in r.cell.overrides): r for r in records}
    assert len(by) == 4 and all(r.status == "ok" for r in records)
    for fmt in ("gguf", "mlx"):
        answers, bench = by[(fmt, False)], by[(fmt, True)]
        assert answers.bench is None and "bench" not in answers.timings
        assert answers.speed is not None and answers.speed.n == bench.speed.n
        assert [r.generation.token_ids for r in answers.results] == [r.generation.token_ids for r in bench.results]
        assert (bench.bench.pp, bench.bench.tg, bench.bench.r) == (32, 8, 2)
        assert bench.bench.pp_context == [32, 32] and bench.bench.tg_context == [8, 8]
        assert bench.bench.measured_on and bench.bench.measured_on == bench.results[0].generation.measured_on
    assert by[("gguf", True)].bench.ids_sha == by[("mlx", True)].bench.ids_sha
    matrix = (sweep / "matrix.csv").read_text().splitlines()[0].split(",")
    assert {"bench_pp_tps", "bench_tg_tps", "bench_pp_cv", "bench_tg_cv", "gen_tps"} <= set(matrix)
    assert "## Speed" in (sweep / "report.md").read_text()
    old = json.loads((sweep / "0" / "result.json").read_text())
    old.pop("bench")
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert read_cell_record(tmp_path / "old.json").bench is None
