"""The vocabulary shared by the whole package: build ids, override parsing and answer keys.

A build id is `FORMAT_PRECISION` (e.g. `gguf_fp16`: the `baseline` and `fidelity.baseline` settings name
cells this way), with `+METHOD` for a calibrated method (`gguf_q4_k_m+imatrix`). An answer key is `(prompt_id, repeat)`: it pairs an answer with the same prompt and
seed in another cell.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from runner.records import CellRecord

IDENTITY_GROUPS = ("model", "format", "precision", "method", "calibration", "generation", "prompts", "judge")
NO_METHOD = "none"


def build_id(fmt: str, precision: str, method: str | None = NO_METHOD) -> str:
    return f"{fmt}_{precision}" + (f"+{method}" if method and method != NO_METHOD else "")


def precision_label(precision: str, artifact: str | None = None, method: str | None = NO_METHOD) -> str:
    """How a precision reads in labels: a prebuilt one by its artifact's name (`prebuilt:x-Q4_K_M`), a calibrated
    one with its method (`q4_k_m+imatrix`)."""
    label = f"{precision}:{Path(artifact).name.removesuffix('.gguf')}" if artifact else str(precision)
    return label + (f"+{method}" if method and method != NO_METHOD else "")


def parse_build_id(value: str, setting: str = "baseline") -> tuple[str, str, str]:
    """`gguf_fp16` → ("gguf", "fp16", "none"), `gguf_q4_k_m+imatrix` → (…, "imatrix"); precision names may contain
    `_` (q4_k_m), format names do not."""
    build, _, method = str(value).partition("+")
    fmt, _, precision = build.partition("_")
    if not fmt or not precision:
        raise ValueError(f"{setting}={value!r}: expected FORMAT_PRECISION, e.g. gguf_fp16")
    return fmt, precision, method or NO_METHOD


def parse_override(item: str) -> tuple[str, str | None]:
    """A Hydra override as (key, value): `+k=v`/`++k=v`/`k=v` → (k, v); `~k` or `~k=v` (a deletion) → (k, None)."""
    text = str(item)
    deleted = text.startswith("~")
    key, _, value = text.lstrip("+~").partition("=")
    return key, None if deleted else value


def override_key(item: str) -> str:
    return parse_override(item)[0]


class _Answer(Protocol):
    prompt_id: str
    repeat: int


def answer_key(result: _Answer) -> tuple[str, int]:
    """What pairs an answer with its counterpart in another cell: same prompt, same repeat (same seed)."""
    return result.prompt_id, result.repeat


# What may differ between a cell and its baseline: the build (its group options and their settings).
BUILD_KEYS = ("format", "precision", "artifact", "method", "calibration")


def is_build(record: CellRecord, build: str | None) -> bool:
    """Whether the record's cell is the build `FORMAT_PRECISION[+METHOD]` (e.g. the sweep's baseline)."""
    c = record.cell
    return build is not None and build_id(c.format, c.precision, c.method) == build


def comparison_context(record: CellRecord) -> tuple[object, ...]:
    """What a cell and its baseline share: everything but the build."""
    c = record.cell
    rest = sorted(o for o in c.overrides if override_key(o).split(".")[0] not in BUILD_KEYS)
    return c.model, c.generation, c.prompts, c.judge, tuple(rest)


def find_baseline(record: CellRecord, records: list[CellRecord], baseline: str | None) -> CellRecord | None:
    """The ok baseline cell (e.g. `gguf_fp16`) of the same model, generation, prompts, judge and other overrides."""
    ctx = comparison_context(record)
    for other in records:
        if other.status == "ok" and is_build(other, baseline) and comparison_context(other) == ctx:
            return other
    return None
