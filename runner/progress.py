"""What the terminal shows while cells run.

Each cell reports its stage and items to `<job_dir>/.status.json` (`CellProgress`, in whichever process
runs the cell); one `SweepMonitor` in the launching process polls the sweep dir and draws. So the display
is the same for the basic, joblib and submitit launchers:

* terminal: a bar per running cell (stage, items, tok/s) above one sweep line that stays at the bottom
  (cell k of N, ok/skipped/failed counts, elapsed, ETA from the finished cells); a finished cell leaves
  one line above them (`skipped mlx × q4_k_m: ...`, no bar);
* plain (stdout is not a terminal): only the one line per finished cell;
* states (a scheduler launcher such as Slurm): one line per change of the queued / running / ok / skipped /
  failed counts or of why the queued jobs wait (squeue's reason, as slurm_watch's poller last heard it:
  `jobs: 2 queued (Resources) · ...`), and the line per finished cell;
* off (`quiet=true`): nothing until the summary.
In every mode the console shows warnings and errors only; INFO logs go to each job's log file.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from runner import slurm
from runner.identity import precision_label
from runner.records import Generation, write_text_atomic

DISPLAY_ENV = "RUNNER_DISPLAY"  # set by the monitor for the cells' processes: terminal | plain | off
STATUS_FILE = ".status.json"
WRITE_EVERY_S = 0.2


def console() -> Console:
    """stdout through a copy of its file descriptor; a log file or pipe gets 160 columns instead of rich's 80,
    so tables do not wrap.

    llama-cpp-python silences a model load by pointing fd 1 and 2 at /dev/null (and swapping sys.stdout),
    process-wide: with the basic launcher a cell loads models while the monitor thread of the same process
    prints finished cells, and a line printed in that window would be lost. The copy keeps writing to the
    terminal or pipe.
    """
    out = Console(file=_stdout_copy(), highlight=False)
    if not out.is_terminal:
        out.width = 160
    return out


def _stdout_copy() -> TextIO:
    try:
        fd = os.dup(sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # captured (no descriptor) or closed: use it as it is
        return sys.stdout
    return os.fdopen(fd, "w", buffering=1, encoding=sys.stdout.encoding or "utf-8", errors="replace")


def display_mode(quiet: bool, out: Console, scheduler: bool = False) -> str:
    if quiet:
        return "off"
    if scheduler:
        return "states"
    return "terminal" if out.is_terminal and out.is_interactive else "plain"


def quiet_console_logs(level: int = logging.WARNING) -> None:
    """Console log handlers show warnings and errors only (the display or plain lines say the rest);
    file handlers keep every INFO line. Hydra re-creates its handlers for each job, so each job calls this.
    Hydra's launch lines (`#3 : format=...`) are hidden too: the per-cell lines name each cell."""
    for name in ("hydra", "hydra_plugins"):  # not reset by Hydra's logging configs, which name neither
        logging.getLogger(name).setLevel(level)
    logging.getLogger("submitit").setLevel(logging.ERROR)  # "Bypassing sacct error" on clusters without accounting
    os.environ.setdefault("SUBMITIT_LOG_LEVEL", "ERROR")  # submitit sets its level when first imported
    for name in (None, "hydra"):
        for handler in logging.getLogger(name).handlers:
            if type(handler) is logging.StreamHandler:
                handler.setLevel(level)
                if handler.stream in (sys.__stdout__, sys.__stderr__):
                    handler.setStream(sys.stdout)  # through rich's live display when one is running


class CellProgress:
    """One cell's stage and items, written atomically for the monitor (throttled)."""

    def __init__(self, job_dir: Path, label: str):
        self.path = Path(job_dir) / STATUS_FILE
        self.state: dict[str, Any] = {"label": label, "stage": "start", "done": 0, "total": None, "tokens": 0,
                                      "decode_s": 0.0}
        self._written = 0.0
        self.enabled = os.environ.get(DISPLAY_ENV) == "terminal"
        self._write(force=True)

    def _write(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.enabled and (force or now - self._written >= WRITE_EVERY_S):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path, json.dumps(self.state))
            self._written = now

    def stage(self, name: str) -> None:
        self.state.update(stage=name, done=0, total=None)
        self._write(force=True)

    def start_items(self, total: int) -> None:
        self.state.update(done=0, total=total)
        self._write(force=True)

    def advance(self, generation: Generation | None = None, cached: bool = False) -> None:
        self.state["done"] += 1
        if generation is not None and not cached and generation.wall_s > 0:
            self.state["tokens"] += generation.completion_tokens
            self.state["decode_s"] += generation.wall_s
        self._write()

    def close(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass
class _Finished:
    label: str
    status: str
    reason: str | None
    seconds: float | None


@dataclass
class SweepMonitor:
    """Polls `sweep_dir` for the cells' status files and records and shows them (see the module doc)."""

    sweep_dir: Path
    total: int | None
    out: Console
    mode: str
    poll_s: float = 0.25
    started: float = field(default_factory=time.monotonic)
    finished: dict[str, _Finished] = field(default_factory=dict)
    running: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: Live | None = None
        self._lock = threading.Lock()
        self._last_states = ""
        self._before: dict[str, float] = {}

    def __enter__(self) -> SweepMonitor:
        os.environ[DISPLAY_ENV] = self.mode
        self._before = {str(d): (d / "result.json").stat().st_mtime for d in self._job_dirs()
                        if (d / "result.json").exists()}  # records from before (a resumed sweep): not this run's
        if self.mode == "terminal":
            self._live = Live(_Render(self), console=self.out, refresh_per_second=8, transient=True,
                              redirect_stdout=True, redirect_stderr=True)
            self._live.start()
        quiet_console_logs()
        if self.mode != "off":
            self._thread = threading.Thread(target=self._loop, name="sweep-monitor", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.mode != "off":
            self.poll()
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll()
            except (OSError, ValueError):  # a file mid-write; the next poll reads it
                pass

    def _job_dirs(self) -> list[Path]:
        if (self.sweep_dir / "result.json").exists() or (self.sweep_dir / STATUS_FILE).exists():
            return [self.sweep_dir]
        if not self.sweep_dir.is_dir():
            return []
        return sorted((d for d in self.sweep_dir.iterdir() if d.is_dir() and d.name.isdigit()),
                      key=lambda d: int(d.name))

    def poll(self) -> None:
        """Read new records and status files; print a line for each cell that finished since the last poll."""
        lines = []
        with self._lock:
            running = {}
            started = self._job_dirs()
            for job in started:
                key = str(job)
                if key in self.finished:
                    continue
                if (job / "result.json").exists() and self._before.get(key) == (job / "result.json").stat().st_mtime:
                    continue
                if (job / "result.json").exists():
                    done = _read_finished(job / "result.json")
                    self.finished[key] = done
                    lines.append(self._line(done))
                elif (job / STATUS_FILE).exists():
                    running[key] = json.loads((job / STATUS_FILE).read_text())
            self.running = running
            if self.mode == "states" and (states := self.states_line(len(started))) != self._last_states:
                lines.append(f"{states} · {_clock(time.monotonic() - self.started)} elapsed")
                self._last_states = states
        if self.mode != "off":
            for line in lines:  # above the live display, if one runs; reasons are printed as they are
                self.out.print(line, markup=False, soft_wrap=True)

    def states_line(self, started: int) -> str:
        """Where the scheduler's jobs are: a job dir appears when its job starts running."""
        c = self.counts()
        queued = max((self.total or started) - started, 0)
        running = started - len(self.finished)
        why = pending_reasons() if queued else ""
        return (f"jobs: {queued} queued{why} · {running} running · {c['ok']} ok · {c['skipped']} skipped · "
                f"{c['failed']} failed")

    def counts(self) -> dict[str, int]:
        out = {"ok": 0, "skipped": 0, "failed": 0}
        for f in self.finished.values():
            out[f.status] = out.get(f.status, 0) + 1
        return out

    def sweep_line(self) -> str:
        n = len(self.finished)
        total = self.total if self.total is not None else max(n + len(self.running), 1)
        c = self.counts()
        elapsed = time.monotonic() - self.started
        return (f"cell {min(n + 1, total)}/{total} · {c['ok']} ok · {c['skipped']} skipped · {c['failed']} failed · "
                f"{_clock(elapsed)} elapsed · ETA {self._eta(total - n)}")

    def _eta(self, remaining: int) -> str:
        """Mean time of the finished cells that ran (skips take no time) × cells left, over those running now."""
        if remaining <= 0:
            return _clock(0)
        ran = [f.seconds for f in self.finished.values() if f.status != "skipped" and f.seconds is not None]
        if not ran:
            return "–"
        return _clock(sum(ran) / len(ran) * remaining / max(1, len(self.running)))

    def _line(self, f: _Finished) -> str:
        where = f"[{len(self.finished)}/{self.total}] " if self.total and self.total > 1 else ""
        if f.status == "skipped":
            return f"{where}skipped {f.label}: {f.reason}"
        if f.status == "failed":
            return f"{where}failed {f.label}: {f.reason}"
        took = f" in {f.seconds:.1f} s" if f.seconds is not None else ""
        return f"{where}ok {f.label}{took}"

    def render(self) -> Group:
        with self._lock:
            running, line = list(self.running.values()), self.sweep_line()
        grid = Table.grid(padding=(0, 1))
        for s in running:
            total, done = s.get("total"), s.get("done", 0)
            rate = f"{s['tokens'] / s['decode_s']:.0f} tok/s" if s.get("decode_s") else ""
            items = f"{done}/{total}" if total else ""
            bar = ProgressBar(total=total or 1, completed=done if total else 0, width=30, pulse=not total)
            grid.add_row(Text(s["label"]), Text(f"[{s['stage']}]", style="cyan"), bar, Text(items), Text(rate))
        return Group(grid, Text(line, style="bold"))


class _Render:
    def __init__(self, monitor: SweepMonitor):
        self.monitor = monitor

    def __rich__(self) -> Group:
        return self.monitor.render()


def _read_finished(path: Path) -> _Finished:
    data = json.loads(path.read_text())
    cell = data.get("cell") or {}
    window = (data.get("windows") or {}).get("cell")
    return _Finished(label=cell_label(cell.get("format"), cell.get("precision"), cell.get("artifact"), cell.get("method")),
                     status=data.get("status", "failed"),
                     reason=data.get("reason"), seconds=window[1] - window[0] if window else None)


def pending_reasons() -> str:
    """` (Resources)`, or ` (2 Priority, 1 Resources)`: why Slurm holds the queued jobs; empty when unknown."""
    reasons = Counter(j.reason for j in slurm.last_seen().values() if j.state == "PENDING" and j.reason != "None")
    if len(reasons) <= 1:
        return "".join(f" ({r})" for r in reasons)
    return " (" + ", ".join(f"{n} {r}" for r, n in reasons.most_common()) + ")"


def cell_label(fmt: Any, precision: Any, artifact: str | None = None, method: str | None = None) -> str:
    return f"{fmt} × {precision_label(str(precision), artifact, method)}"


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
