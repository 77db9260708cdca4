"""llama.cpp's log: into the job's log file, and captured where a build needs its lines.

llama-cpp-python's own callback maps ggml's log levels off by one (WARN reads as ERROR), so llama.cpp's
remarks on its own choices ("using full-size SWA cache") print on the console past `verbose=False`.
`to_job_log` replaces it: lines go to the `llama_cpp` logger, warnings into the job's log file, and only
errors reach the console.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any

log = logging.getLogger("llama_cpp")
# ggml's DEBUG and INFO (the load dump, hundreds of lines a model) stay out; WARN goes to the job log as INFO
LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.INFO, 4: logging.ERROR}
CONT = 5  # ggml: this text continues the previous line

_callback: Any = None
_pending: list[str] = []
_level = logging.INFO


def _emit(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    global _level
    if level != CONT:
        _level = LEVELS.get(level, logging.INFO)
    _pending.append(text.decode("utf-8", "replace"))
    if _pending[-1].endswith("\n"):
        line = "".join(_pending).rstrip()
        _pending.clear()
        if line:
            log.log(_level, line)


def to_job_log() -> None:
    """Route llama.cpp's log through `_emit` (idempotent; call before loading a model)."""
    global _callback
    import llama_cpp

    if _callback is None:
        _callback = llama_cpp.llama_log_callback(_emit)
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))


class LogCapture:
    """Collect llama.cpp's log lines while a build runs (quantization fallbacks arrive only this way)."""

    def __init__(self) -> None:
        import llama_cpp

        self.llama_cpp = llama_cpp
        self.lines: list[str] = []
        self._cb = llama_cpp.llama_log_callback(self._collect)

    def _collect(self, level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        self.lines.append(text.decode("utf-8", "replace"))

    def __enter__(self) -> "LogCapture":
        self.llama_cpp.llama_log_set(self._cb, ctypes.c_void_p(0))
        return self

    def __exit__(self, *exc: Any) -> None:
        to_job_log()

    def warnings(self) -> list[str]:
        text = "".join(self.lines)
        return sorted({line.strip() for line in text.splitlines() if "fallback" in line.lower()})
