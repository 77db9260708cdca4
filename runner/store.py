"""Content-addressed artifact store: key → directory, one builder per key, atomic publish.

`Store.get_or_build(kind, payload, build)` hashes `payload` (everything the content depends on, never
paths or timestamps) into a key. If `<root>/<kind>/<key>/manifest.json` exists the entry is reused.
Otherwise, under a file lock, `build(tmp_dir)` fills a temp dir that is then renamed into place, so a
killed build leaves no half entry. Every build appends a line to `<root>/builds.jsonl` (audit trail
and build counter).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from runner.locks import store_lock
from runner.records import write_text_atomic


def hash_payload(payload: Any) -> str:
    """Stable sha256 of a JSON-serialisable payload."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def ensure_writable(path: Path) -> None:
    """Create `path` if needed and prove it writable; raises OSError otherwise."""
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".probe-{uuid.uuid4().hex}"
    probe.touch()
    probe.unlink()


@dataclass
class Entry:
    key: str
    path: Path
    manifest: dict[str, Any]
    cache_hit: bool


_REFRESHED: set[tuple[str, str, str]] = set()  # (root, kind, key) recomputed by this process: recompute once


class Store:
    """`refresh`: kinds whose existing entries are recomputed (once per process) instead of reused.
    `lock`, `lease_s`: how jobs sharing the store exclude each other (runner/locks.py)."""

    def __init__(self, root: str | Path, refresh: frozenset[str] = frozenset(), lock: str = "file",
                 lease_s: float = 60.0):
        self.root = Path(root)
        self.refresh = frozenset(refresh)
        self.lock_kind, self.lease_s = lock, lease_s
        try:
            ensure_writable(self.root)
        except OSError as e:
            raise PermissionError(f"artifact store '{self.root}' is not writable ({e}); set store_dir") from e

    def _locked(self, path: str):  # type: ignore[no-untyped-def]
        return store_lock(path, self.lock_kind, self.lease_s)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def _must_refresh(self, kind: str, key: str) -> bool:
        return kind in self.refresh and (str(self.root), kind, key) not in _REFRESHED

    def lookup(self, kind: str, payload: Any) -> Entry | None:
        key = hash_payload(payload)
        if self._must_refresh(kind, key):
            return None
        final = self.path(kind, key)
        manifest = final / "manifest.json"
        if manifest.exists():
            return Entry(key, final, json.loads(manifest.read_text()), True)
        return None

    def get_or_build(
        self, kind: str, payload: Any, build: Callable[[Path], dict[str, Any] | None]
    ) -> Entry:
        """Return the entry for `payload`, building it once (across processes) if missing.

        `build(tmp_dir)` writes the content into `tmp_dir` and returns extra manifest fields.
        """
        key = hash_payload(payload)
        final = self.path(kind, key)
        if (hit := self.lookup(kind, payload)) is not None:
            return hit
        final.parent.mkdir(parents=True, exist_ok=True)
        with self._locked(str(final) + ".lock"):
            if (hit := self.lookup(kind, payload)) is not None:
                return hit
            for stale in final.parent.glob(f".tmp-{key[:16]}-*"):  # left by a killed build; we hold the lock
                shutil.rmtree(stale, ignore_errors=True)
            tmp = final.parent / f".tmp-{key[:16]}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            t0 = time.perf_counter()
            try:
                extra = build(tmp) or {}
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            manifest = {"kind": kind, "key": key, "payload": payload, "build_s": time.perf_counter() - t0, **extra}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
            if final.exists():  # a refreshed entry, or a leftover without manifest
                shutil.rmtree(final)
            os.replace(tmp, final)
            _REFRESHED.add((str(self.root), kind, key))
            self._log_build(kind, key, manifest["build_s"])
            return Entry(key, final, manifest, False)

    def put_json(self, kind: str, payload: Any, record: dict[str, Any]) -> Entry:
        """Cache a small JSON result (generation, judgment) under its payload key."""
        return self.get_or_build(kind, payload, lambda tmp: {"record": record})

    def file_digest(self, path: Path) -> str:
        """sha256 of a file, memoized by (resolved path, size, mtime_ns) in `<root>/digests.json`."""
        st = path.stat()
        ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        memo_path = self.root / "digests.json"
        with self._locked(str(memo_path) + ".lock"):
            memo = json.loads(memo_path.read_text()) if memo_path.exists() else {}
        if ident in memo:
            return memo[ident]
        digest = sha256_file(path)
        with self._locked(str(memo_path) + ".lock"):
            memo = json.loads(memo_path.read_text()) if memo_path.exists() else {}
            memo[ident] = digest
            write_text_atomic(memo_path, json.dumps(memo, indent=0, sort_keys=True))
        return digest

    def builds(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Build log entries (for tests and benchmarks: how many conversions happened)."""
        log = self.root / "builds.jsonl"
        if not log.exists():
            return []
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        return [r for r in rows if kind is None or r["kind"] == kind]

    def _log_build(self, kind: str, key: str, build_s: float) -> None:
        with self._locked(str(self.root / "builds.jsonl.lock")):
            with open(self.root / "builds.jsonl", "a") as f:
                f.write(json.dumps({"kind": kind, "key": key, "build_s": round(build_s, 4), "pid": os.getpid(),
                                    "host": socket.gethostname(), "slurm_job": os.environ.get("SLURM_JOB_ID")}) + "\n")
