"""One backend per format; everything format-specific lives in this package."""

from __future__ import annotations

from runner.backends.base import Backend

FORMATS = ("mlx", "gguf")


def get_backend(name: str) -> Backend:
    if name == "mlx":
        from runner.backends.mlx import MLXBackend

        return MLXBackend()
    if name == "gguf":
        from runner.backends.gguf import GGUFBackend

        return GGUFBackend()
    raise ValueError(f"format {name!r}: expected one of {', '.join(FORMATS)}")
