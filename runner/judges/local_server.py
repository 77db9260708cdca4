"""Lifecycle of a `python -m llama_cpp.server` subprocess serving a local GGUF judge model."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


@dataclass
class ServerSettings:
    """`judge.server` in conf/judge/local.yaml."""

    start: bool = False
    model_path: str | None = None
    port: int | None = None  # None: a free port
    extra_args: list[str] = field(default_factory=list)
    startup_timeout_s: float = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class LocalServer:
    """Context manager: start the server, wait until `/v1/models` answers, stop it on exit."""

    def __init__(self, settings: ServerSettings, model_alias: str):
        if settings.model_path is None:
            raise ValueError("judge.server.model_path is required when judge.server.start is true")
        self.settings = settings
        self.model_alias = model_alias
        self.port = settings.port or free_port()
        self.base_url = f"http://{HOST}:{self.port}/v1"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = None

    def command(self) -> list[str]:
        s = self.settings
        return [sys.executable, "-m", "llama_cpp.server", "--model", str(s.model_path), "--host", HOST,
                "--port", str(self.port), "--model_alias", self.model_alias, *map(str, s.extra_args)]

    def __enter__(self) -> LocalServer:
        # A file, not a pipe: nobody reads the server's output while it runs, and a full pipe would block it.
        self._log = tempfile.TemporaryFile()
        env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
        log.info("starting judge server: %s", " ".join(self.command()))
        self._proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT, env=env)
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
            if self._proc.poll() is not None:
                raise RuntimeError(f"judge server exited with code {self._proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as r:
                    if r.status == 200:
                        log.info("judge server ready on port %d after %.1f s", self.port, time.monotonic() - t0)
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"judge server not ready after {self.settings.startup_timeout_s} s "
                           f"(judge.server.startup_timeout_s):\n{self.log_tail()}")

    def log_tail(self, n: int = 2000) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-n:]

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None
