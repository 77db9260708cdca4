"""The tiny test model: deterministic build, HF/MLX/llama.cpp compatibility, tokenizer agreement."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from runner.tiny_model import build_tiny_model

EXPECTED_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                  "tokenizer.model", "tokenizer_config.json"}
CHAT = [{"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?\n  def add(a, b): return a+b"}]
# Raw-text edge cases: text chunks between special tokens, leading spaces, byte fallback.
TRICKY = ["hello world", "<|im_end|> hi", "<|im_end|>  two\n", " leading", "\n\n", "tabs\tand\ttabs",
          "naïve café 東京 🙂", "<s>hi</s>", "<think>reason</think>answer", "a<|im_start|>b", "  <think> x </think>  "]


def _hashes(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def _config(d: Path) -> dict:
    return json.loads((d / "config.json").read_text())


def _tokenizer(d: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(d), local_files_only=True)


def test_build_is_byte_identical(tiny_model_dir: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    again.mkdir()
    (again / "tokenizer.json").write_text("{}")  # stale files must not leak into the rebuild
    assert build_tiny_model(again) == again
    assert set(_hashes(tiny_model_dir)) == EXPECTED_FILES
    assert _hashes(again) == _hashes(tiny_model_dir)  # also proves no absolute paths are embedded


def test_config_and_weights(tiny_model_dir: Path) -> None:
    from safetensors.numpy import load_file

    cfg = _config(tiny_model_dir)
    weights = load_file(str(tiny_model_dir / "model.safetensors"))
    assert cfg["model_type"] == "qwen3" and cfg["tie_word_embeddings"] and "lm_head.weight" not in weights
    assert weights["model.embed_tokens.weight"].shape == (cfg["vocab_size"], cfg["hidden_size"])
    assert weights["model.layers.1.self_attn.k_norm.weight"].shape == (cfg["head_dim"],)
    assert all(str(w.dtype) == "float16" for w in weights.values())
    gen = json.loads((tiny_model_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == cfg["eos_token_id"]


def test_hf_tokenizer(tiny_model_dir: Path) -> None:
    tok = _tokenizer(tiny_model_dir)
    cfg = _config(tiny_model_dir)
    assert len(tok) == cfg["vocab_size"]
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                   tokenize=False, enable_thinking=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    thinking = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                       tokenize=False)
    assert thinking.endswith("<|im_start|>assistant\n")
    assert tok.encode("<|im_end|>", add_special_tokens=False) == [tok.eos_token_id] == [cfg["eos_token_id"]]
    assert tok.encode("hi", add_special_tokens=True) == tok.encode("hi", add_special_tokens=False)  # no BOS


def test_mlx_forward_and_generate(tiny_model_dir: Path) -> None:
    mx = pytest.importorskip("mlx.core")
    from mlx_lm import load, stream_generate
    from mlx_lm.utils import load_model

    model, _ = load_model(tiny_model_dir)
    tok = _tokenizer(tiny_model_dir)
    ids = tok.encode(tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False),
                     add_special_tokens=False)
    logits = model(mx.array([ids]))
    assert logits.shape == (1, len(ids), _config(tiny_model_dir)["vocab_size"])
    assert mx.all(mx.isfinite(logits)).item()

    model, mlx_tok = load(str(tiny_model_dir))
    responses = list(stream_generate(model, mlx_tok, ids, max_tokens=4))
    assert 1 <= len(responses) <= 4 and all(isinstance(r.text, str) for r in responses)


def test_gguf_vocab(tiny_gguf: Path, tiny_model_dir: Path) -> None:
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(str(tiny_gguf))
    tok = _tokenizer(tiny_model_dir)
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    assert reader.fields["tokenizer.ggml.model"].contents() == "llama"
    assert len(types) == _config(tiny_model_dir)["vocab_size"]
    for t in ("<|im_start|>", "<|im_end|>"):
        assert types[tok.convert_tokens_to_ids(t)] == gguf.TokenType.CONTROL
    for t in ("<think>", "</think>"):
        assert types[tok.convert_tokens_to_ids(t)] == gguf.TokenType.USER_DEFINED


def test_llama_cpp_matches_hf(tiny_gguf: Path, tiny_model_dir: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    import numpy as np

    tok = _tokenizer(tiny_model_dir)
    llm = llama_cpp.Llama(model_path=str(tiny_gguf), n_ctx=256, n_threads=2, logits_all=True, verbose=False)
    assert llm.token_eos() == tok.eos_token_id
    prompt = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False, enable_thinking=False)
    for text in [prompt, *TRICKY]:
        hf_ids = tok.encode(text, add_special_tokens=False)
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == hf_ids, text

    # Same weights, same logits (F16 GGUF vs the MLX float16 model).
    mx = pytest.importorskip("mlx.core")
    from mlx_lm.utils import load_model

    ids = tok.encode(prompt, add_special_tokens=False)
    llm.eval(ids)
    ref = np.asarray(llm.scores[: len(ids)])
    model, _ = load_model(tiny_model_dir)
    got = np.asarray(model(mx.array([ids]))[0].astype(mx.float32))
    assert np.abs(got - ref).max() < 2e-2
    assert (got.argmax(-1) == ref.argmax(-1)).mean() > 0.9
