"""Terminal progress per cell and stage (rich); silent in quiet mode or when stderr is not a terminal."""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    def __init__(self, title: str = "", quiet: bool = False):
        self.enabled = not quiet and sys.stderr.isatty()
        self._bar: Any = None
        self._task: Any = None
        self.title = title
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn

            self._bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            transient=True)
            self._bar.start()
            self._task = self._bar.add_task(title, total=None)

    def stage(self, name: str) -> None:
        if self._bar:
            self._bar.update(self._task, description=f"{self.title} [{name}]", completed=0, total=None)

    def start_items(self, total: int) -> None:
        if self._bar:
            self._bar.update(self._task, completed=0, total=total)

    def advance(self) -> None:
        if self._bar:
            self._bar.advance(self._task)

    def close(self) -> None:
        if self._bar:
            self._bar.stop()
            self._bar = None
