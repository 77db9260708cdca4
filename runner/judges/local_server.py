"""Lifecycle of a `python -m runner.judges.serve` subprocess (llama_cpp.server) serving a local GGUF judge model.

The server's output goes to a log file that is kept after it stops. While judging, `check_alive` turns the
process's death into one `ServerExited`, logged once with the end of that log.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
EXITED = "judge server exited"  # every reason starts with it, so records and the matrix can tell it apart
TAIL_LINES = 10


@dataclass
class ServerSettings:
    """`judge.server` in conf/judge/local.yaml."""

    start: bool = False
    model_path: str | None = None
    port: int | None = None  # None: a free port
    n_ctx: int = 4096
    # llama.cpp load settings, resolved in the server process by runner.backends.gguf.LlamaSettings
    n_threads: int | str | None = "auto"
    n_threads_batch: int | str | None = "auto"
    n_gpu_layers: int | str | None = "auto"
    extra_bufts: bool = False
    chat_format: str | None = None  # None: the GGUF's own chat template
    log_dir: str | None = None  # None: a new temporary directory
    extra_args: list[str] = field(default_factory=list)  # llama_cpp.server's own options; they come last
    startup_timeout_s: float = 120.0


class ServerExited(RuntimeError):
    """The judge server process is gone. `reason` is one line starting with EXITED; `tail` ends its log."""

    def __init__(self, reason: str, tail: str):
        super().__init__(f"{reason}; last lines of its log:\n{tail}")
        self.reason = reason
        self.tail = tail


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def returncode_text(code: int) -> str:
    """'code 1', or the signal's name for a process killed by one ('SIGKILL (signal 9)')."""
    if code >= 0:
        return f"code {code}"
    try:
        return f"{signal.Signals(-code).name} (signal {-code})"
    except ValueError:
        return f"signal {-code}"


def gguf_has_chat_template(path: str | Path) -> bool:
    """Whether the GGUF's metadata holds `tokenizer.chat_template`; ValueError for a file that is not a GGUF."""
    from runner.backends.gguf_source import read_gguf_info

    try:
        return read_gguf_info(Path(path)).chat_template is not None
    except (ValueError, OSError) as e:
        raise ValueError(f"{path}: cannot read GGUF metadata ({e})") from None


def _auto(value: object) -> str:
    return "auto" if value is None else str(value)


class LocalServer:
    """Context manager: start the server, wait until `/v1/models` answers, stop it on exit."""

    def __init__(self, settings: ServerSettings, model_alias: str):
        if settings.model_path is None:
            raise ValueError("judge.server.model_path is required when judge.server.start is true")
        self.settings = settings
        self.model_alias = model_alias
        self.port = settings.port or free_port()
        self.base_url = f"http://{HOST}:{self.port}/v1"
        self.log_path: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._exited: ServerExited | None = None
        self._lock = threading.Lock()

    def command(self) -> list[str]:
        s = self.settings
        cmd = [sys.executable, "-m", "runner.judges.serve", "--model", str(s.model_path),
               "--model_alias", self.model_alias, "--host", HOST, "--port", str(self.port), "--n_ctx", str(s.n_ctx),
               "--n_threads", _auto(s.n_threads), "--n_threads_batch", _auto(s.n_threads_batch),
               "--n_gpu_layers", _auto(s.n_gpu_layers), "--extra_bufts", str(bool(s.extra_bufts)).lower()]
        if s.chat_format:
            cmd += ["--chat_format", s.chat_format]
        return [*cmd, *map(str, s.extra_args)]

    def _new_log_path(self) -> Path:
        folder = Path(self.settings.log_dir or tempfile.mkdtemp(prefix="runner-judge-server-"))
        folder.mkdir(parents=True, exist_ok=True)
        alias = re.sub(r"[^\w.-]+", "_", self.model_alias) or "judge"
        return folder / f"{alias}-{time.strftime('%Y%m%d-%H%M%S')}-{self.port}.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def __enter__(self) -> LocalServer:
        self.log_path = self._new_log_path()
        # Unbuffered: the log's last lines must be on disk when the process dies.
        env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), "PYTHONUNBUFFERED": "1"}
        log.info("starting judge server (log: %s): %s", self.log_path, " ".join(self.command()))
        # A file, not a pipe: nobody reads the server's output while it runs, and a full pipe would block it.
        with open(self.log_path, "wb") as out:
            self._proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.settings.startup_timeout_s:
            if (code := self._proc.poll()) is not None:
                raise self._exit_error(code, "before it was ready")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as r:
                    if r.status == 200:
                        log.info("judge server ready on port %d after %.1f s", self.port, time.monotonic() - t0)
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"judge server not ready after {self.settings.startup_timeout_s} s "
                           f"(judge.server.startup_timeout_s); log: {self.log_path}\n{self.log_tail()}")

    def _exit_error(self, code: int, when: str) -> ServerExited:
        return ServerExited(f"{EXITED} with {returncode_text(code)} {when} (log: {self.log_path})", self.log_tail())

    def check_alive(self, wait_s: float = 0.0) -> None:
        """Raise ServerExited once the process has ended, waiting up to `wait_s` for a dying one to be reaped.

        The first detection is logged (once per server), with the end of the server's log.
        """
        if self._exited is None:
            if self._proc is None:
                return
            try:
                code = self._proc.wait(wait_s) if wait_s > 0 else self._proc.poll()
            except subprocess.TimeoutExpired:
                return
            if code is None:
                return
            with self._lock:
                if self._exited is None:
                    self._exited = self._exit_error(code, "while judging")
                    log.error("%s; judging stopped: the remaining judgments are recorded as failed. "
                              "Last lines of its log:\n%s", self._exited.reason, self._exited.tail)
        raise ServerExited(self._exited.reason, self._exited.tail)

    def log_tail(self, lines: int = TAIL_LINES) -> str:
        if self.log_path is None:
            return ""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 64 * 1024))
                text = f.read().decode(errors="replace")
        except OSError as e:
            return f"(cannot read {self.log_path}: {e})"
        return "\n".join(line[:500] for line in text.rstrip("\n").splitlines()[-lines:])  # llama.cpp's are long

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc is not None:
            log.debug("judge server stopped; its log: %s", self.log_path)
        self._proc = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None
