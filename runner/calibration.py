"""Calibration data for the calibrated quantization methods (`method=imatrix`; MLX's calibrated methods): one UTF-8
text, from the `calibration` group, with the sha256 of its content — which goes into every cache key it shapes.

`none` (the group's default) means no calibration was asked for: an uncalibrated method uses none, a
calibrated one the bundled text (`default`, runner/data/calibration.txt). `file` is your own text; `dataset` a
Hugging Face dataset's text column (network, or the local HF cache), written once into the store as text.

`text_source` is the one mechanism for where a text comes from (bundled default / file / dataset): the fidelity
corpus (`fidelity.corpus`, same keys, its own default text) resolves through it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.store import Store, sha256_file

DEFAULT_TEXT = Path(__file__).resolve().parent / "data" / "calibration.txt"
KIND = "calibration"  # store kind of a dataset's text


@dataclass(frozen=True)
class Calibration:
    """The calibration text a calibrated method runs on."""

    name: str  # default | file | dataset: what the cell's `calibration` column says
    path: Path  # the UTF-8 text
    sha256: str  # of its bytes: in every cache key it shapes
    spec: dict[str, Any]  # what it was made from (the file, or the dataset id, split, column, rows, revision)


def resolved_name(method: dict[str, Any], calibration: dict[str, Any]) -> str:
    """The calibration a cell records: none for an uncalibrated method, `default` for a calibrated one given none."""
    if not method.get("calibrated"):
        return "none"
    name = str(calibration.get("name", "none"))
    return "default" if name == "none" else name


def check(calibration: dict[str, Any], setting: str = "calibration") -> None:
    """What the config alone can decide (a missing file, a dataset without an id); `setting` names the key in errors."""
    source = calibration.get("source", "none")
    if source == "file" and calibration.get("file"):
        path = Path(str(calibration["file"])).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{setting}.file: file not found: {path}")
    elif source == "dataset" and not calibration.get("dataset"):
        raise ValueError(f"{_dataset_option(setting)} needs {setting}.dataset= a Hugging Face dataset id")
    elif source not in ("none", "default", "file", "dataset"):
        raise ValueError(f"{setting}.source must be none, default, file or dataset, got {source!r}")


def _dataset_option(setting: str) -> str:
    return "calibration=dataset" if setting == "calibration" else f"{setting}.source=dataset"


def resolve(method: dict[str, Any], calibration: dict[str, Any], store: Store) -> Calibration | None:
    """The text a calibrated `method` runs on (None for an uncalibrated one)."""
    name = resolved_name(method, calibration)
    if name == "none":
        return None
    return text_source(calibration, store, name=name, default=DEFAULT_TEXT)


def text_source(cfg: dict[str, Any], store: Store | None, *, name: str, default: Path,
                setting: str = "calibration") -> Calibration:
    """A text from the `calibration` group's keys: `source` none/default (the bundled `default` text), file (`file`;
    null: `default`) or dataset (`dataset`, `config`, `split`, `column`, `rows`, `revision`), with its sha256.

    `store` memoizes a file's digest and holds a dataset's text; without one a file is hashed directly and a dataset
    is an error."""
    source = cfg.get("source", "none")
    if source in ("none", "default", "file"):
        path = Path(str(cfg.get("file") or default)).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"{setting}.file: file not found: {path}")
        try:
            path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{setting}.file {path}: not UTF-8 text ({e})") from None
        digest = store.file_digest(path) if store is not None else sha256_file(path)
        return Calibration(name, path, digest, {"file": str(path)})
    if store is None:
        raise ValueError(f"{_dataset_option(setting)} needs the store (its text is written there once)")
    return _dataset(name, cfg, store, setting)


def _dataset(name: str, cfg: dict[str, Any], store: Store, setting: str = "calibration") -> Calibration:
    spec = {k: cfg.get(k) for k in ("dataset", "config", "split", "column", "rows", "revision")}

    def build(tmp: Path) -> dict[str, Any]:
        try:
            import datasets
        except ImportError:
            raise RuntimeError(f"{_dataset_option(setting)} needs the `datasets` package: "
                               "pip install -e '.[calibration]'") from None
        try:
            data = datasets.load_dataset(spec["dataset"], spec["config"], split=spec["split"],
                                         revision=spec["revision"])
        except Exception as e:  # noqa: BLE001 - offline, unknown id, bad split: one line naming the dataset
            raise RuntimeError(f"{setting}.dataset={spec['dataset']!r}: could not load it ({type(e).__name__}: "
                               f"{e}); it needs network or a warm Hugging Face cache") from None
        if spec["column"] not in data.column_names:
            raise ValueError(f"{setting}.column={spec['column']!r}: the dataset has {', '.join(data.column_names)}")
        n = len(data) if not spec["rows"] else min(int(spec["rows"]), len(data))  # rows 0 / null: every row
        rows = data.select(range(n))[spec["column"]]
        (tmp / "calibration.txt").write_text("\n\n".join(str(r) for r in rows), encoding="utf-8")
        return {"rows": len(rows)}

    entry = store.get_or_build(KIND, spec, build)
    path = entry.path / "calibration.txt"
    return Calibration(name, path, store.file_digest(path), spec)
