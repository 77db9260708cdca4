"""What every stage of one cell reads: the cell, its store, the model source and the rendered prompts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runner.cell import Cell
from runner.contract import ChatRenderer, RenderedPrompt
from runner.prompts import Prompt
from runner.records import HostInfo, ModelSourceInfo
from runner.store import Store


@dataclass
class CellContext:
    cell: Cell
    store: Store
    source_dir: Path
    source: ModelSourceInfo
    renderer: ChatRenderer
    stop_ids: list[int]
    strip_thinking: bool
    prompts: list[Prompt]
    rendered: dict[str, RenderedPrompt]  # prompt id → the one rendering every format receives
    host: HostInfo
    parallel_jobs: int = 1  # cells the launcher runs at once
