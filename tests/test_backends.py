"""Each backend prepares and generates for fp16 and two quantized precisions; the generation contract."""

from __future__ import annotations

import numpy as np
import pytest

from runner.backends import base, get_backend
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
