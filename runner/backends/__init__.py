"""One backend per format; everything format-specific lives in this package."""

from __future__ import annotations

from runner.backends.base import Backend
from runner.contract import TextCodec
from runner.records import ModelSourceInfo

FORMATS = ("mlx", "gguf")


def text_codec(source: ModelSourceInfo) -> TextCodec | None:
    """The tokenizer of record when it is not the model's HF one: a GGUF source's own (llama.cpp)."""
    if source.gguf_path:
        from runner.backends.gguf_source import LlamaCodec

        return LlamaCodec(source.gguf_path)
    return None


def get_backend(name: str) -> Backend:
    if name == "mlx":
        from runner.backends.mlx import MLXBackend

        return MLXBackend()
    if name == "gguf":
        from runner.backends.gguf import GGUFBackend

        return GGUFBackend()
    raise ValueError(f"format {name!r}: expected one of {', '.join(FORMATS)}")
