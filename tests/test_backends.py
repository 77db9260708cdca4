"""Each backend prepares and generates for fp16 and two quantized precisions; the generation contract."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from runner.backends import base, get_backend
from runner.context import CellContext
from runner.host import host_info
from runner.stages.generate import GenerationStage
from runner.cell import load_option as group
from runner.contract import ChatRenderer
from runner.model_source import resolve_model
from runner.prompts import load_prompts
from runner.records import SamplerParams
from runner.store import Store

GREEDY = SamplerParams(temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, repetition_penalty=1.0, max_tokens=32, seed=0)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("store"))
    model_dir, source = resolve_model(group("model", "tiny"), store)
    renderer = ChatRenderer(model_dir, enable_thinking=False)
    prompts = load_prompts(group("prompts", "seed"))
    return store, model_dir, source, renderer, renderer.stop_token_ids(), prompts


@pytest.mark.parametrize("fmt,precisions", [("mlx", ["fp16", "8bit", "4bit"]), ("gguf", ["fp16", "q8_0", "q4_k_m"])])
def test_prepare_and_generate(env, fmt, precisions):
    store, model_dir, source, renderer, stop_ids, prompts = env
    backend, fmt_cfg = get_backend(fmt), group("format", fmt)
    ids = renderer.render(prompts[0].prompt).token_ids
    bpw = []
    for precision in precisions:
        art = backend.prepare(model_dir, source, group("precision", precision), fmt_cfg, store)
        assert art.size_bytes > 0 and not art.cache_hit and art.tool_versions
        again = backend.prepare(model_dir, source, group("precision", precision), fmt_cfg, store)
        assert again.cache_hit and again.key == art.key
        bpw.append(art.bits_per_weight)
        with backend.load(art, fmt_cfg) as session:
            gen = base.generate(session, ids, GREEDY, stop_ids)
            assert 0 < gen.completion_tokens <= GREEDY.max_tokens
            assert gen.finish_reason in ("stop", "length")
            assert gen.prompt_tokens == len(ids) and gen.ttft_s > 0 and gen.gen_tps > 0
            capped = base.generate(session, ids, SamplerParams(**{**GREEDY.__dict__, "max_tokens": 5}), stop_ids)
            assert capped.completion_tokens <= 5
            logp = session.logprobs(ids[:24])
            assert logp.shape == (24, len(renderer.tokenizer))
            np.testing.assert_allclose(np.exp(logp).sum(axis=1), 1.0, rtol=1e-4)
    assert bpw[0] > bpw[1] > bpw[2]
    assert len(store.builds("gguf-base")) <= 1


def test_same_contract_across_engines(env):
    """Identical token ids into MLX fp16 and GGUF F16; greedy answers agree on most tokens."""
    store, model_dir, source, renderer, stop_ids, prompts = env
    answers = {}
    for fmt in ("mlx", "gguf"):
        backend, fmt_cfg = get_backend(fmt), group("format", fmt)
        art = backend.prepare(model_dir, source, group("precision", "fp16"), fmt_cfg, store)
        with backend.load(art, fmt_cfg) as session:
            answers[fmt] = [base.generate(session, renderer.render(p.prompt).token_ids, GREEDY, stop_ids).token_ids
                            for p in prompts]
    matched = total = 0
    for a, b in zip(answers["mlx"], answers["gguf"]):
        total += max(len(a), len(b))
        matched += sum(x == y for x, y in zip(a, b))
    agreement = matched / total
    print(f"MLX fp16 vs GGUF F16 greedy token agreement: {agreement:.1%} over {total} tokens")
    assert agreement >= 0.8


def test_llama_cpp_tokenizes_like_the_hf_renderer(env, tiny_gguf):
    """The ids both engines receive are the HF tokenizer's; llama.cpp's own tokenizer agrees with them."""
    from llama_cpp import Llama

    _, _, _, renderer, _, prompts = env
    llm = Llama(model_path=str(tiny_gguf), vocab_only=True, verbose=False)
    for p in prompts:
        r = renderer.render(p.prompt)
        assert llm.tokenize(r.text.encode(), add_bos=False, special=True) == r.token_ids


@pytest.mark.parametrize("fmt", ["mlx", "gguf"])
def test_sampling_is_seeded_and_follows_the_contract(env, fmt):
    """Same seed → same tokens; top_k=1 sampling is greedy (the shared filter chain holds in both engines)."""
    store, model_dir, source, renderer, stop_ids, prompts = env
    backend, fmt_cfg = get_backend(fmt), group("format", fmt)
    art = backend.prepare(model_dir, source, group("precision", "fp16"), fmt_cfg, store)
    ids = renderer.render(prompts[1].prompt).token_ids
    sampled = SamplerParams(temperature=1.5, top_p=0.95, top_k=50, min_p=0.0, repetition_penalty=1.0,
                            max_tokens=24, seed=7)
    with backend.load(art, fmt_cfg) as session:
        def run(**change) -> list[int]:
            return base.generate(session, ids, SamplerParams(**{**sampled.__dict__, **change}), stop_ids).token_ids
        first = run()
        assert run() == first
        assert any(run(seed=s) != first for s in (8, 9, 10))
        assert run(top_k=1) == base.generate(session, ids, GREEDY, stop_ids).token_ids[:24]


def test_gguf_evaluates_every_prompt_from_an_empty_context(env):
    """llama.cpp's generate(reset=True) would reuse the KV prefix of the previous call: every call must
    evaluate its whole prompt, so repeats are timed like first runs and outputs do not depend on call order."""
    store, model_dir, source, renderer, stop_ids, prompts = env
    backend, fmt_cfg = get_backend("gguf"), group("format", "gguf")
    art = backend.prepare(model_dir, source, group("precision", "fp16"), fmt_cfg, store)
    ids = renderer.render(prompts[2].prompt).token_ids
    with backend.load(art, fmt_cfg) as session:
        evaluated: list[int] = []
        original = session.llm.eval
        session.llm.eval = lambda tokens: (evaluated.append(len(tokens)), original(tokens))[1]
        first = base.generate(session, ids, GREEDY, stop_ids)
        other = base.generate(session, renderer.render(prompts[3].prompt).token_ids, GREEDY, stop_ids)
        again = base.generate(session, ids, GREEDY, stop_ids)
    prompt_evals = [n for n in evaluated if n > 1]
    assert prompt_evals.count(len(ids)) == 2, prompt_evals  # the repeat evaluated its full prompt again
    assert again.token_ids == first.token_ids and other.token_ids


def test_unmeasurable_speed_is_nan_never_zero(env):
    store, model_dir, source, renderer, stop_ids, prompts = env
    backend, fmt_cfg = get_backend("gguf"), group("format", "gguf")
    art = backend.prepare(model_dir, source, group("precision", "fp16"), fmt_cfg, store)
    one = SamplerParams(**{**GREEDY.__dict__, "max_tokens": 1})
    with backend.load(art, fmt_cfg) as session:
        gen = base.generate(session, renderer.render(prompts[0].prompt).token_ids, one, stop_ids)
    assert gen.completion_tokens == 1 and np.isnan(gen.gen_tps)  # one token: no decode time to divide by
    from runner.speed import speed_stats
    from runner.records import PromptResult

    stats = speed_stats([PromptResult("p", "c", 0, "t", None, "r", "sha", "k", gen, "a")])
    assert np.isnan(stats.gen_tps) and stats.s_per_prompt > 0


def test_runtime_is_resolved_on_this_host(env):
    """`auto` never reaches a record: device, dtype, threads and GPU layers are what ran."""
    import os

    import llama_cpp

    store, model_dir, source, *_ = env
    gguf, mlx = get_backend("gguf"), get_backend("mlx")
    g_cfg, m_cfg = group("format", "gguf"), group("format", "mlx")
    assert g_cfg["n_gpu_layers"] == "auto" and g_cfg["n_threads"] == "auto"
    g_art = gguf.prepare(model_dir, source, group("precision", "fp16"), g_cfg, store)
    m_art = mlx.prepare(model_dir, source, group("precision", "4bit"), m_cfg, store)
    g, m = gguf.runtime(g_cfg, g_art), mlx.runtime(m_cfg, m_art)
    offload = llama_cpp.llama_supports_gpu_offload()
    assert g.settings["n_gpu_layers"] == (-1 if offload else 0) and g.device == ("cpu" if not offload else g.device)
    cores = os.cpu_count()
    assert g.settings["n_threads"] == (1 if cores <= 2 else cores // 2) and g.settings["n_threads_batch"] == cores
    import mlx.core as mx

    on_cpu = mx.default_device() == mx.cpu
    assert m.device == ("cpu" if on_cpu else m.device) and m.compute_dtype == ("float32" if on_cpu else "float16")
    assert (m.cpu_threads or 0) >= 1 if on_cpu else m.cpu_threads is None  # measured: MLX takes no thread setting
    assert g.engine["llama-cpp-python"] == llama_cpp.__version__ and g.engine["llama.cpp"] not in ("", "unknown")
    assert m.engine["mlx"] == mx.__version__ and m.engine["mlx-lm"]
    assert gguf.runtime({**g_cfg, "n_gpu_layers": 0}, g_art).device == "cpu"
    assert mlx.runtime({**m_cfg, "compute_dtype": "model"}, m_art).compute_dtype == "float16"  # the tiny model's
    with pytest.raises(ValueError, match="n_gpu_layers"):
        gguf.runtime({**g_cfg, "n_gpu_layers": "most"}, g_art)


@pytest.mark.parametrize("fmt", ["mlx", "gguf"])
def test_every_loaded_model_is_warmed_up_before_the_first_timed_prompt(env, fmt, tmp_path):
    """One short untimed generation per load, the same in both engines; it changes no answer."""
    store, model_dir, source, renderer, stop_ids, prompts = env
    backend, fmt_cfg = get_backend(fmt), group("format", fmt)
    art = backend.prepare(model_dir, source, group("precision", "fp16"), fmt_cfg, store)
    calls: list[int] = []
    load = backend.load

    def spied_load(artifact, cfg):  # the real session, its stream calls recorded
        session = load(artifact, cfg)
        stream = session.stream
        session.stream = lambda ids, sampler: (calls.append(sampler.max_tokens), stream(ids, sampler))[1]
        return session

    backend.load = spied_load
    rendered = {p.id: renderer.render(p.prompt) for p in prompts[:2]}
    ctx = CellContext(cell=SimpleNamespace(repeats=1, sampler=lambda repeat: GREEDY), store=Store(tmp_path),
                      source_dir=model_dir, source=source, renderer=renderer, stop_ids=stop_ids, strip_thinking=True,
                      prompts=prompts[:2], rendered=rendered, host=host_info(), parallel_jobs=1)
    with GenerationStage(ctx, backend, art, fmt_cfg) as stage:
        results = stage.run()
        stage.close()
        stage.session()  # loaded again (e.g. for fidelity): warmed up again
    assert calls == [base.WARMUP_TOKENS, GREEDY.max_tokens, GREEDY.max_tokens, base.WARMUP_TOKENS]
    with load(art, fmt_cfg) as cold:  # no warm-up: the same answers
        assert [base.generate(cold, r.token_ids, GREEDY, stop_ids).token_ids for r in rendered.values()] == \
            [r.generation.token_ids for r in results]
