"""Deterministic tiny Qwen3 checkpoint for tests (random weights, in-memory SentencePiece BPE tokenizer).

Every build with the same seed is byte-identical, so the directory can serve as a cache key input.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np

TINY_MODEL_VERSION = "2"  # bump when the recipe changes (it is part of cache keys)
FINAL_NORM_GAIN = 6.0  # spreads the logits so greedy answers vary (see _weights)

SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>"]  # CONTROL in llama.cpp
THINK_TOKENS = ["<think>", "</think>"]  # user-defined, not special (as in Qwen3)
VOCAB_SIZE = 1024

STALE_FILES = ("tokenizer.json", "chat_template.jinja", "special_tokens_map.json", "added_tokens.json")

HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, FFN = 256, 2, 4, 2, 64, 512

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

CORPUS = '''\
You are a helpful assistant. The system prompt sets the rules; the user asks and the assistant answers.
The quick brown fox jumps over the lazy dog while the farmer watches from the porch.
THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG. Yes, Zebras Keep Very Quiet In Unusual Jungles.
A small model can still be useful when the goal is to test the plumbing rather than the answers.
Quantization maps floating point weights to a handful of integer levels and a scale per group.
When the bit width goes down, the error goes up, and the perplexity of the model usually rises.
We measure the error of each layer and report the mean, the maximum and the standard deviation.
Please answer the question in one short sentence and explain your reasoning step by step.
What is the capital of France? The capital of France is Paris, a city on the river Seine.
How many legs does a spider have? A spider has eight legs, while an insect has only six.
Write a function that returns the sum of two numbers and add a test for it.
The experiment matrix lists every model, every quantization method and every benchmark.
Each run writes a record with the configuration, the metrics, the timing and the hardware.
If a run fails, the runner stores the error message and moves on to the next cell of the matrix.
The cache key is a hash of the model, the method, the settings and the version of the recipe.
Tokens are the pieces of text that the model reads; a tokenizer splits words into tokens.
Large language models predict the next token given all of the previous tokens in the context.
The temperature controls how random the sampling is; a temperature of zero means greedy decoding.
She opened the window, looked at the rain and decided to stay inside with a good book.
They walked along the beach at sunset, talking about music, travel, science and history.
Numbers such as 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 42, 100 and 2024 appear in many documents.
Good software is tested, documented, reviewed and easy to change when the requirements move.
The user asked for a summary, so the assistant wrote three bullet points and a conclusion.
Let me think about this problem carefully before I give the final answer to the user.
First, read the input. Second, compute the result. Third, print the output and stop.
The weather today is sunny with a light breeze from the west and a high of twenty degrees.
import json
import math
from pathlib import Path
from dataclasses import dataclass, field


@dataclass
class Record:
    model: str
    method: str
    bits: int = 4
    metrics: dict[str, float] = field(default_factory=dict)


def add(a: int, b: int) -> int:
    """Return the sum of a and b."""
    return a + b


def mean(values: list[float]) -> float:
    if not values:
        raise ValueError("mean of empty list")
    return sum(values) / len(values)


def load_records(path: Path) -> list[Record]:
    records = []
    with open(path, "r", encoding="utf-8") as f:
        for line in f:
            data = json.loads(line)
            records.append(Record(**data))
    return records


def perplexity(losses: list[float]) -> float:
    return math.exp(mean(losses))


class Runner:
    def __init__(self, config: dict, output_dir: Path) -> None:
        self.config = config
        self.output_dir = output_dir
        self.results = []

    def run(self) -> None:
        for model in self.config["models"]:
            for method in self.config["methods"]:
                result = self.evaluate(model, method)
                self.results.append(result)
                print(f"{model} {method}: {result}")

    def evaluate(self, model: str, method: str) -> float:
        return 0.0


if __name__ == "__main__":
    for i in range(10):
        print(i, add(i, i), i * i)
    assert add(2, 3) == 5
    numbers = [1.0, 2.5, 3.5]
    print("mean =", mean(numbers))
'''


def _train_tokenizer() -> bytes:
    """Train a byte-fallback BPE SentencePiece model in memory (no file paths end up in the proto)."""
    import sentencepiece as spm

    lines = [line for line in CORPUS.splitlines() if line.strip()]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        byte_fallback=True,
        character_coverage=1.0,
        user_defined_symbols=SPECIAL_TOKENS + THINK_TOKENS,
        # Neither transformers nor llama.cpp normalize; both add the dummy "▁" prefix (see build_tiny_model).
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        minloglevel=2,
    )
    return buf.getvalue()


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _weights(vocab_size: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float16)

    w = {"model.embed_tokens.weight": mat(vocab_size, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = mat(HEADS * HEAD_DIM, HIDDEN)
        w[p + "self_attn.k_proj.weight"] = mat(KV_HEADS * HEAD_DIM, HIDDEN)
        w[p + "self_attn.v_proj.weight"] = mat(KV_HEADS * HEAD_DIM, HIDDEN)
        w[p + "self_attn.o_proj.weight"] = mat(HIDDEN, HEADS * HEAD_DIM)
        w[p + "self_attn.q_norm.weight"] = ones(HEAD_DIM)
        w[p + "self_attn.k_norm.weight"] = ones(HEAD_DIM)
        w[p + "mlp.gate_proj.weight"] = mat(FFN, HIDDEN)
        w[p + "mlp.up_proj.weight"] = mat(FFN, HIDDEN)
        w[p + "mlp.down_proj.weight"] = mat(HIDDEN, FFN)
        w[p + "input_layernorm.weight"] = ones(HIDDEN)
        w[p + "post_attention_layernorm.weight"] = ones(HIDDEN)
    # A larger final-norm gain spreads the logits (std ~2 instead of ~0.3): greedy answers vary instead of
    # repeating one token, so cross-engine and cross-precision agreement tests can fail.
    w["model.norm.weight"] = np.full(HIDDEN, FINAL_NORM_GAIN, dtype=np.float16)
    return w


def build_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny, deterministic HF Qwen3 checkpoint (config, safetensors, tokenizer) into out_dir."""
    import sentencepiece as spm
    from safetensors.numpy import save_file
    from tokenizers import normalizers
    from transformers import AutoTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in STALE_FILES:  # transformers/the converter would read these instead of what we write
        (out / stale).unlink(missing_ok=True)

    sp_bytes = _train_tokenizer()
    (out / "tokenizer.model").write_bytes(sp_bytes)
    sp = spm.SentencePieceProcessor(model_proto=sp_bytes)
    vocab_size = sp.get_piece_size()
    ids = {t: sp.piece_to_id(t) for t in SPECIAL_TOKENS + THINK_TOKENS}
    bos_id, eos_id, pad_id = sp.bos_id(), ids["<|im_end|>"], sp.eos_id()

    tok_config = {
        "tokenizer_class": "LlamaTokenizer",  # only for the conversion from tokenizer.model; replaced below
        "chat_template": CHAT_TEMPLATE,
        "bos_token": "<s>",
        "eos_token": "<|im_end|>",
        "pad_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
        # The GGUF converter reads this: special -> CONTROL, otherwise USER_DEFINED (both split out by llama.cpp).
        "added_tokens_decoder": {
            str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                     "special": t not in THINK_TOKENS}
            for t, i in ids.items()
        },
    }
    _write_json(out / "tokenizer_config.json", tok_config)
    tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    if len(tok) != vocab_size:
        raise RuntimeError(f"tokenizer size {len(tok)} != sentencepiece size {vocab_size}")
    # llama.cpp SPM vocabs (the Qwen3 converter never writes add_space_prefix=false) prepend a space to every text
    # chunk between special tokens, even one that already starts with a space. Reproduce that exactly with the
    # original Llama normalizer; LlamaTokenizer would rebuild its own pre-tokenizer, hence the generic class.
    backend = tok.backend_tokenizer
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    backend.pre_tokenizer = None
    backend.save(str(out / "tokenizer.json"))
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    _write_json(out / "tokenizer_config.json", tok_config)

    config = {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": vocab_size,
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": True,
        "torch_dtype": "float16",
        "use_cache": True,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
    }
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json",
                {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id, "do_sample": False})
    save_file(_weights(vocab_size, seed), str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m runner.tiny_model OUT_DIR")
    print(build_tiny_model(sys.argv[1]))
