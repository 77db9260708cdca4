"""The prepare stage: a build's artifact (converted or quantized model) from the cell's model source.

Artifact cache keys are format-specific, so each backend makes its own in `Backend.prepare`
(runner/backends/); the source model's key is made by runner/model_source.py.
"""

from __future__ import annotations

from typing import Any

from runner import calibration
from runner.backends import get_backend
from runner.backends.base import Backend
from runner.context import CellContext
from runner.records import ArtifactInfo


def prepare_build(ctx: CellContext, format_cfg: dict[str, Any], precision_cfg: dict[str, Any],
                  method_cfg: dict[str, Any]) -> tuple[Backend, ArtifactInfo]:
    """The backend of `format_cfg` and its artifact for `precision_cfg` made with `method_cfg` (on the cell's
    calibration data when the method is calibrated), built once and reused from the store."""
    backend = get_backend(format_cfg["name"])
    data = calibration.resolve(method_cfg, ctx.cell.calibration, ctx.store)
    return backend, backend.prepare(ctx.source_dir, ctx.source, precision_cfg, format_cfg, ctx.store, method_cfg, data)
